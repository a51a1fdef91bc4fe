"""FastInst's config keys (``MODEL.FASTINST``), with the official defaults.

Key names and defaults follow the official project (junjiehe96/FastInst, ``fastinst/config.py``)
so that its YAML files load unchanged, with two exceptions: the decoder name defaults to the
decoder that exists ("FastInstDecoder"; the official default names a class it does not ship),
and keys shared with the other families (``SEM_SEG_HEAD.PIXEL_DECODER_NAME``,
``INPUT.DATASET_MAPPER_NAME``, ``SOLVER.BACKBONE_MULTIPLIER``) keep the package defaults; the
FastInst YAML files set them.
"""

from detectron2.config import CfgNode as CN

__all__ = ["add_fastinst_config"]


def add_fastinst_config(cfg: CN) -> None:
    """Add the ``MODEL.FASTINST`` keys (and ``INPUT.CROP.RESIZE``) to ``cfg``.

    Works next to the Mask2Former keys in one config: it only adds keys that do not exist.
    """
    if not hasattr(cfg.INPUT.CROP, "RESIZE"):
        # Training crop of the FastInst mapper: first resize the short side to one of MIN_SIZE
        # (with probability 0.5), then crop (INPUT.CROP.TYPE / SIZE).
        cfg.INPUT.CROP.RESIZE = CN()
        cfg.INPUT.CROP.RESIZE.ENABLED = False
        # Candidate short sides (pixels) of that resize.
        cfg.INPUT.CROP.RESIZE.MIN_SIZE = (800,)
        # "choice" (one of MIN_SIZE) or "range" (uniform between the two values).
        cfg.INPUT.CROP.RESIZE.MIN_SIZE_TRAIN_SAMPLING = "choice"

    cfg.MODEL.FASTINST = CN()
    fi = cfg.MODEL.FASTINST
    # ------------------------------------------------------------ losses and matching costs
    # Supervise the initial, intermediate and GT-mask-guided predictions too.
    fi.DEEP_SUPERVISION = True
    # Class weight of "no object" in the classification loss.
    fi.NO_OBJECT_WEIGHT = 0.1
    # Loss weights, also the matcher's cost weights.
    fi.CLASS_WEIGHT = 2.0
    fi.DICE_WEIGHT = 5.0
    fi.MASK_WEIGHT = 5.0
    # Matching cost of a query whose location lies outside the ground-truth mask (and of an
    # instance-activation pixel outside it).
    fi.LOCATION_WEIGHT = 1e3
    # Weight of the instance-activation (proposal) classification loss.
    fi.PROPOSAL_WEIGHT = 20.0

    # ------------------------------------------------------------ transformer decoder
    # Registered name of the transformer decoder (mask2former TRANSFORMER_DECODER_REGISTRY).
    fi.TRANSFORMER_DECODER_NAME = "FastInstDecoder"
    # Attention heads, dropout (unused: the official layers use 0), FFN width.
    fi.NHEADS = 8
    fi.DROPOUT = 0.0
    fi.DIM_FEEDFORWARD = 1024
    # Number of dual-path decoder layers (1: "D1", 3: "D3").
    fi.DEC_LAYERS = 10
    # Pre-LayerNorm layers instead of post-norm.
    fi.PRE_NORM = False
    # Query width (must equal SEM_SEG_HEAD.CONVS_DIM: queries are pixel features).
    fi.HIDDEN_DIM = 256
    # Instance-activation-guided queries selected per image.
    fi.NUM_OBJECT_QUERIES = 100
    # Learnable auxiliary queries (never produce predictions, never masked).
    fi.NUM_AUX_QUERIES = 8

    # ------------------------------------------------------------ inference
    fi.TEST = CN()
    fi.TEST.SEMANTIC_ON = False
    fi.TEST.INSTANCE_ON = True
    fi.TEST.PANOPTIC_ON = False
    # Panoptic: keep queries whose top class score exceeds this.
    fi.TEST.OBJECT_MASK_THRESHOLD = 0.8
    # Panoptic: drop a segment whose visible part is below this fraction of its mask.
    fi.TEST.OVERLAP_THRESHOLD = 0.8
    # Resize masks to the output size before semantic inference (forced on with other tasks).
    fi.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE = False

    # Pad the batch to a multiple of this (-1: the backbone's size divisibility).
    fi.SIZE_DIVISIBILITY = -1

    # ------------------------------------------------------------ point-sampled losses
    # Points per mask (matching and losses), PointRend oversampling and importance ratio.
    fi.TRAIN_NUM_POINTS = 112 * 112
    fi.OVERSAMPLE_RATIO = 3.0
    fi.IMPORTANCE_SAMPLE_RATIO = 0.75
