"""SegViT's config keys (``MODEL.SEGVIT``, ``MODEL.VIT``)."""

from detectron2.config import CfgNode as CN

__all__ = ["add_segvit_config"]


def add_segvit_config(cfg: CN) -> None:
    """Add the SegViT keys to ``cfg`` (works next to the Mask2Former keys)."""
    cfg.MODEL.SEGVIT = CN()
    cfg.MODEL.VIT = CN()
