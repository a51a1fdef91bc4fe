"""FastInst's config keys (``MODEL.FASTINST``), with the official defaults."""

from detectron2.config import CfgNode as CN

__all__ = ["add_fastinst_config"]


def add_fastinst_config(cfg: CN) -> None:
    """Add the ``MODEL.FASTINST`` keys to ``cfg`` (works next to the Mask2Former keys)."""
    cfg.MODEL.FASTINST = CN()
