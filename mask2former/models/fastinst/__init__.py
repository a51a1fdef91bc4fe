"""fastinst model family (work in progress)."""

from .config import add_fastinst_config  # noqa: F401
