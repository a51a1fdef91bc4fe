"""SegViT's config keys (``MODEL.SEGVIT``, ``MODEL.VIT``).

Defaults are the reference's ADE20K ViT-L/16 setting (zbwxp/SegVit,
``configs/segvit/segvit_vit-l_jax_640x640_160k_ade20k.py``).

Our key                       reference (mmseg config)
MODEL.VIT.IMG_SIZE            backbone.img_size (position-embedding grid = IMG_SIZE / PATCH_SIZE)
MODEL.VIT.PATCH_SIZE          backbone.patch_size
MODEL.VIT.EMBED_DIM           backbone.embed_dims
MODEL.VIT.DEPTH               backbone.num_layers
MODEL.VIT.NUM_HEADS           backbone.num_heads
MODEL.VIT.OUT_INDICES         backbone.out_indices
MODEL.VIT.DROP_PATH_RATE      backbone.drop_path_rate
MODEL.VIT.SHRINK_INDEX        backbone.shrink_idx (type vit_shrink; -1 = plain ViT)
MODEL.SEGVIT.HIDDEN_DIM       decode_head.embed_dims
MODEL.SEGVIT.NHEADS           decode_head.num_heads
MODEL.SEGVIT.LAYERS_PER_STAGE decode_head.num_layers
MODEL.SEGVIT.NUM_STAGES       decode_head.use_stages
MODEL.SEGVIT.USE_PROJ         decode_head.use_proj
MODEL.SEGVIT.*_WEIGHT         loss_decode (ATMLoss) cls_weight / mask_weight / dice_weight
MODEL.SEGVIT.NO_OBJECT_WEIGHT SetCriterion eos_coef
MODEL.SEGVIT.TEST.*           test_cfg (mode, crop_size, stride)
"""

from detectron2.config import CfgNode as CN

__all__ = ["add_segvit_config"]


def add_segvit_config(cfg: CN) -> None:
    """Add the SegViT keys to ``cfg`` (works next to the Mask2Former keys)."""
    cfg.MODEL.VIT = CN()
    # Training crop size in pixels; the learned position embedding has IMG_SIZE/PATCH_SIZE cells
    # per side and is resized (bicubic) to every other input grid.
    cfg.MODEL.VIT.IMG_SIZE = 640
    # Patch size in pixels (tokens at stride PATCH_SIZE).
    cfg.MODEL.VIT.PATCH_SIZE = 16
    # Token width C.
    cfg.MODEL.VIT.EMBED_DIM = 1024
    # Number of transformer blocks.
    cfg.MODEL.VIT.DEPTH = 24
    # Attention heads per block.
    cfg.MODEL.VIT.NUM_HEADS = 16
    # MLP hidden width / C.
    cfg.MODEL.VIT.MLP_RATIO = 4.0
    # 0-based blocks whose outputs feed the head (named "block{i}").
    cfg.MODEL.VIT.OUT_INDICES = [7, 15, 23]
    # Stochastic depth rate of the last block (linear from 0).
    cfg.MODEL.VIT.DROP_PATH_RATE = 0.3
    # Block doing query-based down-sampling (QD, SegViT Shrunk); -1: plain ViT.
    cfg.MODEL.VIT.SHRINK_INDEX = -1
    # Epsilon of the blocks' LayerNorms (1e-6 as the jax/timm ViT).
    cfg.MODEL.VIT.LN_EPS = 1e-6

    cfg.MODEL.SEGVIT = CN()
    # Decoder width D (reference: C / 2).
    cfg.MODEL.SEGVIT.HIDDEN_DIM = 512
    # Attention heads of the decoders.
    cfg.MODEL.SEGVIT.NHEADS = 16
    # ATM (and QU) layers per stage.
    cfg.MODEL.SEGVIT.LAYERS_PER_STAGE = 3
    # ATMHead: stages = backbone outputs used (deepest first); ShrunkATMHead: QU stages.
    cfg.MODEL.SEGVIT.NUM_STAGES = 3
    # Linear(C -> D) + LayerNorm on each backbone output before its stage.
    cfg.MODEL.SEGVIT.USE_PROJ = True
    # FFN hidden width of the decoder layers (reference: 4 D).
    cfg.MODEL.SEGVIT.DIM_FEEDFORWARD = 2048
    # Dropout of the decoder layers (residual branches and cross-attention weights).
    cfg.MODEL.SEGVIT.DROPOUT = 0.1
    # Supervise every stage's (Shrunk: every layer's) prediction, not only the last.
    cfg.MODEL.SEGVIT.DEEP_SUPERVISION = True
    # Loss weights: class cross-entropy, sigmoid focal mask loss, dice; "no object" CE weight.
    cfg.MODEL.SEGVIT.CLASS_WEIGHT = 1.0
    cfg.MODEL.SEGVIT.MASK_WEIGHT = 20.0
    cfg.MODEL.SEGVIT.DICE_WEIGHT = 1.0
    cfg.MODEL.SEGVIT.NO_OBJECT_WEIGHT = 0.1
    # Focal loss alpha and gamma.
    cfg.MODEL.SEGVIT.FOCAL_ALPHA = 0.25
    cfg.MODEL.SEGVIT.FOCAL_GAMMA = 2.0
    # False (reference): ignore pixels are negatives of every class mask in the focal and dice
    # losses. True: they are left out of both.
    cfg.MODEL.SEGVIT.EXCLUDE_IGNORE = False

    cfg.MODEL.SEGVIT.TEST = CN()
    # "whole": the padded image at once; "slide": windows of SLIDE_CROP every SLIDE_STRIDE,
    # overlapping scores averaged (the reference's test mode; needed by the Shrunk model).
    cfg.MODEL.SEGVIT.TEST.MODE = "slide"
    # Window (height, width) in pixels.
    cfg.MODEL.SEGVIT.TEST.SLIDE_CROP = (640, 640)
    # Step between windows (height, width) in pixels.
    cfg.MODEL.SEGVIT.TEST.SLIDE_STRIDE = (608, 608)
