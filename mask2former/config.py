"""Config keys of the package's models, added to a Detectron2 config, and config loading.

Key names and code defaults follow the official project, so official YAML files load
unchanged. Note that the code defaults are MaskFormer-v1 values; the released YAML files set
the Mask2Former values (see ``configs/``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import yaml
from detectron2.config import CfgNode, get_cfg
from detectron2.config import CfgNode as CN
from detectron2.projects.deeplab import add_deeplab_config

from .layers.ms_deform_attn_dispatch import default_impl
from .models.fastinst.config import add_fastinst_config
from .models.mp_former.config import add_mp_former_config
from .models.segvit.config import add_segvit_config
from .models.transfiner.config import add_transfiner_config

__all__ = [
    "UnknownConfigKeyError",
    "add_maskformer2_config",
    "adjust_for_device",
    "inference_switches",
    "load_config",
]

# Meta-architectures whose inference switches ({SEMANTIC,INSTANCE,PANOPTIC}_ON, thresholds) are
# not under MODEL.MASK_FORMER.TEST: the node that holds them.
_INFERENCE_SWITCHES = {"FastInst": ("MODEL", "FASTINST", "TEST")}


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
    # Your own datasets, {name: {FORMAT, IMAGE_ROOT, JSON_FILE, ...}}: see data/declared.py.
    cfg.DATASETS.CUSTOM = CN(new_allowed=True)

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
    # Query positional embedding: "learned" (query_embed, as the official model) or "none"
    # (no query positions, as the released MP-Former code trains).
    cfg.MODEL.MASK_FORMER.QUERY_POS = "learned"
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
    # At inference (eval mode), keep the convolutions' weights and the images in the
    # channels-last memory format (oneDNN's NHWC kernels on the CPU: no layout reorders around
    # every convolution). Training uses the default format, which is faster there.
    cfg.MODEL.MASK_FORMER.CHANNELS_LAST = True
    # At inference, run the network (backbone and head, not the post-processing) through
    # torch.compile(dynamic=False): compiled at the first call of each padded input shape (about
    # a minute for the R50 at 800x1216 on 2 CPU cores; needs a C++ compiler), then 0.90x the
    # eager network time there (benchmarks/predictor_speed.py --backends eager compile). Shared
    # by the families that use the common inference path.
    cfg.TEST.COMPILE = False

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
    # Deformable attention implementation of this model's MSDeformAttn modules: "auto" (compiled
    # op when built and the inputs fit) or "pytorch". Default: "pytorch" if M2F_MSDA_IMPL=pytorch.
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_ATTENTION_IMPL = default_impl()

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
    add_fastinst_config(cfg)
    add_segvit_config(cfg)
    add_transfiner_config(cfg)


_BASE_KEY = "_BASE_"


class UnknownConfigKeyError(KeyError):
    """A config file or command-line override names a key that the config does not have."""

    def __str__(self) -> str:
        return str(self.args[0])


def _yaml_has_key(node: dict, key: str) -> bool:
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _file_with_key(config_file: str, key: str) -> str | None:
    """The file among ``config_file`` and its ``_BASE_`` ancestors that sets ``key``."""
    try:
        with open(config_file) as f:
            data = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError):
        return None
    if _yaml_has_key(data, key):
        return config_file
    bases = data.get(_BASE_KEY) or []
    for base in [bases] if isinstance(bases, str) else bases:
        if not base.startswith(("/", "~")) and "://" not in base:
            base = os.path.join(os.path.dirname(config_file), base)
        found = _file_with_key(os.path.expanduser(base), key)
        if found:
            return found
    return None


def _has_key(cfg: CfgNode, key: str) -> bool:
    node = cfg
    for part in key.split("."):
        if not isinstance(node, CfgNode) or part not in node:
            return False
        node = node[part]
    return True


def load_config(config_file: str = "", opts: Sequence[str] = ()) -> CfgNode:
    """Detectron2 defaults + DeepLab + Mask2Former keys, then ``config_file``, then ``opts``.

    Raises:
        UnknownConfigKeyError: naming the unknown key and the file (or override) setting it.
    """
    cfg = get_cfg()
    add_deeplab_config(cfg)
    add_maskformer2_config(cfg)
    if config_file:
        try:
            cfg.merge_from_file(config_file)
        except KeyError as e:
            message = str(e.args[0]) if e.args else ""
            if not message.startswith("Non-existent config key"):
                raise
            key = message.split(":", 1)[1].strip()
            source = _file_with_key(config_file, key) or config_file
            raise UnknownConfigKeyError(
                f"Unknown config key '{key}' set in {source}"
                + (f" (a _BASE_ of {config_file})" if source != config_file else "")
                + ". Check its spelling, or whether it belongs to another project."
            ) from None
    opts = list(opts or [])
    if len(opts) % 2:
        raise ValueError(f"Config overrides must be KEY VALUE pairs; got an odd list: {opts}")
    known = []
    for key, value in zip(opts[0::2], opts[1::2]):
        if _declares_dataset(cfg, key):
            continue  # set below, once the known keys are merged
        if not _has_key(cfg, key):
            raise UnknownConfigKeyError(
                f"Unknown config key '{key}' in the command-line override '{key} {value}'."
            )
        known += [key, value]
    cfg.merge_from_list(known)
    for key, value in zip(opts[0::2], opts[1::2]):
        if _declares_dataset(cfg, key):
            _, _, name, field = key.split(".")
            node = cfg.DATASETS.CUSTOM.setdefault(name, CN(new_allowed=True))
            node[field] = CN._decode_cfg_value(value)
    return cfg


def _declares_dataset(cfg: CfgNode, key: str) -> bool:
    """Whether override ``key`` is a field of a dataset declared on the command line:
    ``DATASETS.CUSTOM.<name>.<FIELD>`` (new names are allowed there, unlike elsewhere)."""
    parts = key.split(".")
    return len(parts) == 4 and parts[:2] == ["DATASETS", "CUSTOM"] and not _has_key(cfg, key)


def inference_switches(cfg: CfgNode) -> CfgNode:
    """The node with the inference switches of the config's model family:
    ``MODEL.MASK_FORMER.TEST``, or the family's own (``MODEL.FASTINST.TEST`` for FastInst)."""
    node = cfg
    default = ("MODEL", "MASK_FORMER", "TEST")
    for part in _INFERENCE_SWITCHES.get(cfg.MODEL.META_ARCHITECTURE, default):
        node = node[part]
    return node


def adjust_for_device(cfg: CfgNode) -> list[str]:
    """Run on the CPU when CUDA is absent; AMP only on CUDA. Returns messages to log."""
    notes = []
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        notes.append(f"CUDA is not available: MODEL.DEVICE {cfg.MODEL.DEVICE} -> cpu.")
        cfg.MODEL.DEVICE = "cpu"
    if cfg.SOLVER.AMP.ENABLED and not cfg.MODEL.DEVICE.startswith("cuda"):
        notes.append(f"AMP is off: SOLVER.AMP.ENABLED is only used on CUDA "
                     f"(MODEL.DEVICE {cfg.MODEL.DEVICE}).")
        cfg.SOLVER.AMP.ENABLED = False
    return notes
