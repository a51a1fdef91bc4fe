"""segvit model family (work in progress)."""

from .config import add_segvit_config  # noqa: F401
