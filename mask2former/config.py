"""Config keys of Mask2Former, added to a Detectron2 config.

Key names and code defaults follow the official project, so official YAML files load
unchanged. Note that the code defaults are MaskFormer-v1 values; the released YAML files set
the Mask2Former values (see ``configs/``).
"""

from detectron2.config import CfgNode as CN
from detectron2.projects.deeplab import add_deeplab_config


def add_maskformer2_config(cfg: CN) -> None:
    """Add the Mask2Former keys (and Detectron2's DeepLab keys they rely on) to ``cfg``."""
    if not hasattr(cfg.SOLVER, "POLY_LR_POWER"):
        add_deeplab_config(cfg)

    # ---------------------------------------------------------------- data
    # Name of the training dataset mapper (see mask2former/data/dataset_mappers).
    cfg.INPUT.DATASET_MAPPER_NAME = "mask_former_semantic"
    # Colour augmentation of SSD (brightness, contrast, saturation, hue) in the MaskFormer mappers.
    cfg.INPUT.COLOR_AUG_SSD = False
    # Largest fraction of a crop that one category may cover (1.0 = plain random crop).
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
    # Pad image and labels up to this fixed size in the MaskFormer mappers (-1: no padding).
    cfg.INPUT.SIZE_DIVISIBILITY = -1
    # Large-scale-jitter mappers: output size (pixels) and scale range of ResizeScale.
    cfg.INPUT.IMAGE_SIZE = 1024
    cfg.INPUT.MIN_SCALE = 0.1
    cfg.INPUT.MAX_SCALE = 2.0

    # ---------------------------------------------------------------- solver
    # Weight decay of embeddings (nn.Embedding: query features, query positions, level embeds).
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    # "ADAMW" or "SGD".
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    # Learning-rate factor of every parameter whose module name contains "backbone".
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1

    # ---------------------------------------------------------------- mask former
    cfg.MODEL.MASK_FORMER = CN()
    # Supervise every intermediate prediction of the transformer decoder.
    cfg.MODEL.MASK_FORMER.DEEP_SUPERVISION = True
    # Class weight of the "no object" class in the classification loss.
    cfg.MODEL.MASK_FORMER.NO_OBJECT_WEIGHT = 0.1
    # Loss weights (also the matcher's cost weights).
    cfg.MODEL.MASK_FORMER.CLASS_WEIGHT = 1.0
    cfg.MODEL.MASK_FORMER.DICE_WEIGHT = 1.0
    cfg.MODEL.MASK_FORMER.MASK_WEIGHT = 20.0

    # Transformer decoder: attention heads, dropout, FFN width, encoder/decoder depth.
    cfg.MODEL.MASK_FORMER.NHEADS = 8
    cfg.MODEL.MASK_FORMER.DROPOUT = 0.1
    cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD = 2048
    cfg.MODEL.MASK_FORMER.ENC_LAYERS = 0
    # Number of prediction points: decoder layers + 1 (the prediction before the first layer).
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 6
    cfg.MODEL.MASK_FORMER.PRE_NORM = False
    # Query and feature width; number of object queries.
    cfg.MODEL.MASK_FORMER.HIDDEN_DIM = 256
    cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = 100
    # Feature the decoder reads: a backbone level or "multi_scale_pixel_decoder".
    cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE = "res5"
    # Always add a 1x1 projection before the decoder, even when widths already match.
    cfg.MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ = False
    # Registered name of the transformer decoder.
    cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME = "MultiScaleMaskedTransformerDecoder"

    # Inference switches and thresholds.
    cfg.MODEL.MASK_FORMER.TEST = CN()
    cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON = True
    cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON = False
    cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = False
    # Panoptic: keep queries whose top class score exceeds this.
    cfg.MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD = 0.0
    # Panoptic: drop a segment whose visible part is below this fraction of its mask.
    cfg.MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD = 0.0
    # Resize masks to the original image before (True) or after (False) semantic inference.
    cfg.MODEL.MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE = False

    # Pad the batch to a multiple of this (-1: use the backbone's size divisibility).
    cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY = 32

    # Point-sampled losses: points per mask, oversampling and importance ratio (PointRend).
    cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 112 * 112
    cfg.MODEL.MASK_FORMER.OVERSAMPLE_RATIO = 3.0
    cfg.MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO = 0.75

    # ---------------------------------------------------------------- pixel decoder
    # Width of the mask embedding / mask features.
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 256
    # Layers of the (deformable) transformer encoder in the pixel decoder.
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 0
    # Registered name of the pixel decoder.
    cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = "BasePixelDecoder"
    # Backbone levels fed to the deformable encoder; its sampling points and heads.
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS = 4
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = 8
    # Deformable attention implementation: "auto" (compiled op when built) or "pytorch".
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_ATTENTION_IMPL = "auto"

    # ---------------------------------------------------------------- swin backbone
    cfg.MODEL.SWIN = CN()
    # Image size of the pre-training (sets nothing at run time; kept for official configs).
    cfg.MODEL.SWIN.PRETRAIN_IMG_SIZE = 224
    cfg.MODEL.SWIN.PATCH_SIZE = 4
    cfg.MODEL.SWIN.EMBED_DIM = 96
    cfg.MODEL.SWIN.DEPTHS = [2, 2, 6, 2]
    cfg.MODEL.SWIN.NUM_HEADS = [3, 6, 12, 24]
    cfg.MODEL.SWIN.WINDOW_SIZE = 7
    cfg.MODEL.SWIN.MLP_RATIO = 4.0
    cfg.MODEL.SWIN.QKV_BIAS = True
    cfg.MODEL.SWIN.QK_SCALE = None
    cfg.MODEL.SWIN.DROP_RATE = 0.0
    cfg.MODEL.SWIN.ATTN_DROP_RATE = 0.0
    # Stochastic depth rate (linearly increasing over blocks).
    cfg.MODEL.SWIN.DROP_PATH_RATE = 0.3
    # Absolute position embedding; layer norm after patch embedding.
    cfg.MODEL.SWIN.APE = False
    cfg.MODEL.SWIN.PATCH_NORM = True
    cfg.MODEL.SWIN.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    # Activation checkpointing in the Swin blocks (saves memory, costs time).
    cfg.MODEL.SWIN.USE_CHECKPOINT = False

    # ---------------------------------------------------------------- checkpoint
    # Skip (with a warning) MODEL.WEIGHTS tensors whose shape differs from the model's, e.g. when
    # fine-tuning with another number of classes; False raises an error naming each such tensor.
    cfg.MODEL.WEIGHTS_ALLOW_SHAPE_MISMATCH = False

    add_mp_former_config(cfg)


def add_mp_former_config(cfg: CN) -> None:
    """Add MP-Former's mask-piloted training keys (``MODEL.MP_FORMER``); all off by default.

    Reference keys (IDEA-Research/MP-Former): see mask2former/modeling/mp_former.py.
    """
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
    # Query positional embedding: "learned" (query_embed; MP queries get 0) or "none" (fork).
    cfg.MODEL.MP_FORMER.QUERY_POS = "learned"
