"""MP-Former's config keys (``MODEL.MP_FORMER``), all off by default.

Our key             reference key (IDEA-Research/MP-Former)
ENABLED             decoder MultiScaleMaskedTransformerDecoderMaskDN with DN_MODE "points"
NUM_GROUPS          MODEL.DN.NUM_DN (>= 100: a budget, G = NUM_GROUPS // M)
MASK_NOISE_RATIO    MODEL.DN.NOISE_SCALE
PER_HEAD_NOISE      MODEL.MASK_FORMER.HEAD_DN
LABEL_NOISE_RATIO   MODEL.MASK_FORMER.LB_NOISE_RATIO (<= 0: off)
PILOT_ALL_LAYERS    MODEL.MASK_FORMER.ALL_LY_DN
CLASS_LOSS          not MODEL.MASK_FORMER.DN_NO_LB

The query positions are a decoder key, ``MODEL.MASK_FORMER.QUERY_POS``: the released code
trains without them ("none"; the ``mp_former/`` configs), "learned" keeps Mask2Former's
``query_embed`` (to fine-tune from an official Mask2Former checkpoint).
"""

from detectron2.config import CfgNode as CN

__all__ = ["add_mp_former_config"]


def add_mp_former_config(cfg: CN) -> None:
    """Add the ``MODEL.MP_FORMER`` keys to ``cfg``."""
    cfg.MODEL.MP_FORMER = CN()
    # Train with mask-piloted (MP) queries; inference is unchanged (ref: decoder ...MaskDN).
    cfg.MODEL.MP_FORMER.ENABLED = False
    # Groups G of MP queries (ref DN.NUM_DN); >= 100 is a total budget: G = NUM_GROUPS // max #GT.
    cfg.MODEL.MP_FORMER.NUM_GROUPS = 1
    # Point noise: every level cell of a GT mask flips w.p. ratio * mask area (ref NOISE_SCALE).
    cfg.MODEL.MP_FORMER.MASK_NOISE_RATIO = 0.0
    # Draw the point noise independently per attention head (ref HEAD_DN).
    cfg.MODEL.MP_FORMER.PER_HEAD_NOISE = False
    # Prob. of replacing an MP query's class by a uniform random one; <= 0: off (LB_NOISE_RATIO).
    cfg.MODEL.MP_FORMER.LABEL_NOISE_RATIO = 0.2
    # Pilot every layer with GT masks; False: only layers 0-3 (ref ALL_LY_DN).
    cfg.MODEL.MP_FORMER.PILOT_ALL_LAYERS = True
    # Classification loss on MP queries (ref: not DN_NO_LB).
    cfg.MODEL.MP_FORMER.CLASS_LOSS = True
