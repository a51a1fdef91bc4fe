"""Mask Transfiner's config keys (``MODEL.TRANSFINER``), with the reference's values."""

from detectron2.config import CfgNode as CN

__all__ = ["add_transfiner_config"]


def add_transfiner_config(cfg: CN) -> None:
    """Add the ``MODEL.TRANSFINER`` keys to ``cfg`` (works next to the Mask2Former keys)."""
    cfg.MODEL.TRANSFINER = CN()
