"""transfiner model family (work in progress)."""

from .config import add_transfiner_config  # noqa: F401
