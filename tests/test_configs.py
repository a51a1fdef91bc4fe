"""Every shipped config loads, carries the released values, and builds a working model.

Building and running the full-size models would take minutes on the CPU, so the build and
forward tests shrink widths, depths and query counts (``shrink``) while keeping each config's
architecture family: backbone type and depth (ResNet-50/101, Swin window and heads), norm
layers (FrozenBN, SyncBN, GN), class count, pixel decoder, decoder, and inference switches.
Full-size construction is covered by tests/models/mask2former/test_state_dict_names.py.

SyncBN is kept as configured: with no process group, ``torch.nn.SyncBatchNorm`` falls back to
plain batch norm, so single-process CPU runs work unchanged.
"""

from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.structures import Instances

import mask2former  # noqa: F401  (registers model components and datasets)
from mask2former.config import add_maskformer2_config

CONFIG_ROOT = Path(__file__).resolve().parents[1] / "configs"
ALL_CONFIGS = sorted(str(p.relative_to(CONFIG_ROOT)) for p in CONFIG_ROOT.rglob("*.yaml"))
# "Base-*" files hold dataset/solver settings that the model configs inherit; not models.
# Mask2Former's model configs are "maskformer2_*"; other families test their own configs in
# tests/models/<family>/ (every file still loads here).
MODEL_CONFIGS = [c for c in ALL_CONFIGS if Path(c).name.startswith(("maskformer2_", "maskformer_"))]
# Configs of the official release (and COCO-Stuff-10k, written in its style): everything in
# configs/<dataset>/<task>/ and its swin/ folder. Method variants (e.g. mp_former/) and the
# synthetic configs have settings of their own.
RELEASED_CONFIGS = [
    c
    for c in MODEL_CONFIGS
    if not c.startswith("synthetic/") and set(Path(c).parts[2:-1]) <= {"swin"}
]

# Number of classes per dataset and task (spec section 7).
NUM_CLASSES = {
    "coco/panoptic": 133,
    "coco/instance": 80,
    "ade20k/semantic": 150,
    "ade20k/panoptic": 150,
    "ade20k/instance": 100,
    "cityscapes/semantic": 19,
    "cityscapes/panoptic": 19,
    "cityscapes/instance": 8,
    "mapillary-vistas/semantic": 65,
    "mapillary-vistas/panoptic": 65,
    "coco-stuff-10k/semantic": 171,
}
# Swin variants (spec section 2): embed dim, depths, heads, window.
SWIN_VARIANTS = {
    "swin_tiny": (96, [2, 2, 6, 2], [3, 6, 12, 24], 7),
    "swin_small": (96, [2, 2, 18, 2], [3, 6, 12, 24], 7),
    "swin_base": (128, [2, 2, 18, 2], [4, 8, 16, 32], 12),
    "swin_large": (192, [2, 2, 18, 2], [6, 12, 24, 48], 12),
}


def load(config: str):
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    cfg.merge_from_file(str(CONFIG_ROOT / config))
    return cfg


def dataset_task(config: str) -> str:
    dataset, task = Path(config).parts[:2]
    return f"{dataset}/{task.replace('-segmentation', '')}"


# ---------------------------------------------------------------------------- loading


@pytest.mark.parametrize("config", ALL_CONFIGS)
def test_config_loads(config):
    text = (CONFIG_ROOT / config).read_text()
    assert "!!python" not in text, "use plain lists, so that yaml.safe_load reads the file"
    cfg = load(config)
    sizes = list(cfg.INPUT.MIN_SIZE_TRAIN)
    if cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING == "choice" and len(sizes) == 16:
        # 0.5x .. 2.0x of the base size S, written out from [int(x * 0.1 * S) for x in 5..20].
        base = sizes[5]
        assert sizes == [int(x * 0.1 * base) for x in range(5, 21)]


def test_official_python_tag_yaml_still_loads(tmp_path):
    """Official YAMLs write MIN_SIZE_TRAIN with a python tag; Detectron2 falls back to it."""
    base = CONFIG_ROOT / "ade20k/semantic-segmentation/maskformer2_R50_bs16_160k.yaml"
    path = tmp_path / "official_style.yaml"
    path.write_text(
        f"_BASE_: {base}\n"
        "INPUT:\n"
        '  MIN_SIZE_TRAIN: !!python/object/apply:eval ["[int(x * 0.1 * 640) for x in '
        'range(5, 21)]"]\n'
    )
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    cfg.merge_from_file(str(path))
    assert list(cfg.INPUT.MIN_SIZE_TRAIN) == [int(x * 0.1 * 640) for x in range(5, 21)]


@pytest.mark.parametrize("config", MODEL_CONFIGS)
def test_datasets_are_registered(config):
    cfg = load(config)
    registered = set(DatasetCatalog.list())
    for name in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST):
        assert name in registered, f"{config}: dataset {name!r} is not registered"


@pytest.mark.parametrize("config", RELEASED_CONFIGS)
def test_released_values(config):
    cfg = load(config)
    mf, head = cfg.MODEL.MASK_FORMER, cfg.MODEL.SEM_SEG_HEAD
    assert cfg.MODEL.META_ARCHITECTURE == "MaskFormer"
    assert head.PIXEL_DECODER_NAME == "MSDeformAttnPixelDecoder"
    assert head.TRANSFORMER_ENC_LAYERS == 6
    assert head.NUM_CLASSES == NUM_CLASSES[dataset_task(config)]
    assert mf.TRANSFORMER_DECODER_NAME == "MultiScaleMaskedTransformerDecoder"
    assert mf.TRANSFORMER_IN_FEATURE == "multi_scale_pixel_decoder"
    assert mf.DEC_LAYERS == 10
    assert (mf.CLASS_WEIGHT, mf.MASK_WEIGHT, mf.DICE_WEIGHT) == (2.0, 5.0, 5.0)
    assert (mf.DROPOUT, mf.HIDDEN_DIM, mf.NHEADS, mf.DIM_FEEDFORWARD) == (0.0, 256, 8, 2048)
    assert mf.TRAIN_NUM_POINTS == 12544
    assert cfg.SOLVER.OPTIMIZER == "ADAMW" and cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE == "full_model"
    if not mf.TEST.SEMANTIC_ON:  # spec pitfall 3
        assert mf.TEST.PANOPTIC_ON or mf.TEST.INSTANCE_ON
    if config.startswith("coco/"):
        assert cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupMultiStepLR"
    else:
        assert cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupPolyLR"

    name = Path(config).name
    variant = next((v for v in SWIN_VARIANTS if v in name), None)
    if variant is None:
        assert cfg.MODEL.BACKBONE.NAME == "build_resnet_backbone"
        if config.startswith("cityscapes/"):
            assert cfg.MODEL.RESNETS.NORM == "SyncBN"
        assert cfg.MODEL.RESNETS.DEPTH == (101 if "R101" in name else 50)
        assert mf.NUM_OBJECT_QUERIES == 100
    else:
        assert cfg.MODEL.BACKBONE.NAME == "D2SwinTransformer"
        s = cfg.MODEL.SWIN
        assert (s.EMBED_DIM, list(s.DEPTHS), list(s.NUM_HEADS), s.WINDOW_SIZE) == (
            SWIN_VARIANTS[variant]
        )
        assert (s.DROP_PATH_RATE, s.APE, s.PATCH_NORM) == (0.3, False, True)
        assert s.PRETRAIN_IMG_SIZE == (384 if "384" in name else 224)
        # Swin-L uses 200 queries except for semantic segmentation.
        large_200 = variant == "swin_large" and "semantic" not in config
        assert mf.NUM_OBJECT_QUERIES == (200 if large_200 else 100)


@pytest.mark.parametrize(
    "config,max_iter,steps",
    [
        ("coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml", 368750, (327778, 355092)),
        (
            "coco/instance-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_100ep.yaml",
            737500,
            (655556, 710184),
        ),
        ("ade20k/semantic-segmentation/maskformer2_R50_bs16_160k.yaml", 160000, None),
        ("cityscapes/panoptic-segmentation/maskformer2_R50_bs16_90k.yaml", 90000, None),
        ("mapillary-vistas/semantic-segmentation/maskformer2_R50_bs16_300k.yaml", 300000, None),
    ],
)
def test_schedules(config, max_iter, steps):
    cfg = load(config)
    assert cfg.SOLVER.MAX_ITER == max_iter
    if steps is not None:
        assert tuple(cfg.SOLVER.STEPS) == steps


# ---------------------------------------------------------------------------- building

IMAGE_SIZE = 64
# The size the outputs are resized to (the "original" image size).
OUT_H, OUT_W = 80, 72


def shrink(cfg):
    """Tiny widths/depths for CPU speed; architecture family and class count unchanged."""
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    mf, head = cfg.MODEL.MASK_FORMER, cfg.MODEL.SEM_SEG_HEAD
    mf.HIDDEN_DIM = 32
    mf.NUM_OBJECT_QUERIES = 8
    mf.DEC_LAYERS = 4  # 3 layers: one round over the 3 scales
    mf.DIM_FEEDFORWARD = 64
    mf.TRAIN_NUM_POINTS = 64
    head.CONVS_DIM = 32  # GroupNorm(32, ...) needs a multiple of 32
    head.MASK_DIM = 32
    head.TRANSFORMER_ENC_LAYERS = 1
    # ResNet: depth, block type and norm unchanged; 4x narrower (64..512 output channels).
    cfg.MODEL.RESNETS.WIDTH_PER_GROUP = 16
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64  # also what Detectron2 requires for R18/R34
    cfg.MODEL.SWIN.EMBED_DIM = 24  # divisible by every variant's heads at every stage
    cfg.MODEL.SWIN.DEPTHS = [2, 2, 2, 2]
    cfg.MODEL.SWIN.DROP_PATH_RATE = 0.0
    return cfg


def _inputs(num_classes: int, with_targets: bool) -> list[dict]:
    """Two images of different sizes (the batch is padded to 64 x 64), 2 and 3 instances."""
    g = torch.Generator().manual_seed(0)
    batch = []
    for n, (h, w) in ((2, (IMAGE_SIZE, IMAGE_SIZE)), (3, (IMAGE_SIZE - 16, IMAGE_SIZE - 24))):
        image = torch.randint(0, 256, (3, h, w), generator=g).to(torch.uint8)
        item = {"image": image, "height": OUT_H, "width": OUT_W}
        if with_targets:
            inst = Instances((h, w))
            inst.gt_classes = torch.randint(0, num_classes, (n,), generator=g)
            inst.gt_masks = torch.rand(n, h, w, generator=g) > 0.5
            item["instances"] = inst
        batch.append(item)
    return batch


# Forward in train and eval mode on one config per distinct code path: inference switches
# (semantic / instance / all three / semantic + panoptic), norms (FrozenBN, SyncBN, BN), ResNet
# depths, Swin windows 7 and 12, the synthetic configs, and one config of each method variant
# folder (e.g. mp_former/). The other configs differ from these only in sizes and class counts;
# they are built (test_builds).
FORWARD_CONFIGS = [
    "coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml",
    "coco/instance-segmentation/maskformer2_R50_bs16_50ep.yaml",
    "coco/panoptic-segmentation/swin/maskformer2_swin_tiny_bs16_50ep.yaml",
    "coco/instance-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_100ep.yaml",
    "ade20k/semantic-segmentation/maskformer2_R50_bs16_160k.yaml",
    "ade20k/instance-segmentation/maskformer2_R50_bs16_160k.yaml",
    "cityscapes/semantic-segmentation/maskformer2_R101_bs16_90k.yaml",
    "cityscapes/panoptic-segmentation/maskformer2_R50_bs16_90k.yaml",
    "mapillary-vistas/panoptic-segmentation/maskformer_R50_bs16_300k.yaml",
]
FORWARD_CONFIGS += [
    c for c in MODEL_CONFIGS if c.startswith("synthetic/") and len(Path(c).parts) == 3
]
FORWARD_CONFIGS += list(  # the first config (sorted) of each variant folder
    {
        Path(c).parts[-2]: c
        for c in reversed(MODEL_CONFIGS)
        if c not in RELEASED_CONFIGS and len(Path(c).parts) > 3
    }.values()
)


def test_forward_configs_exist():
    assert set(FORWARD_CONFIGS) <= set(MODEL_CONFIGS)


def build_checked(config: str):
    """Build the shrunk model of ``config`` and check what the config asked for."""
    cfg = shrink(load(config))
    model = build_model(cfg)
    head = model.sem_seg_head
    assert head.num_classes == cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    assert len(head.predictor.transformer_ffn_layers) == cfg.MODEL.MASK_FORMER.DEC_LAYERS - 1
    assert model.criterion.empty_weight.shape == (head.num_classes + 1,)
    return model, cfg


@pytest.mark.parametrize("config", [c for c in MODEL_CONFIGS if c not in FORWARD_CONFIGS])
def test_builds(config):
    build_checked(config)


def num_aux(cfg) -> int:
    """Auxiliary prediction points: before the first decoder layer and after all but the last."""
    return cfg.MODEL.MASK_FORMER.DEC_LAYERS - 1


@pytest.mark.parametrize("config", FORWARD_CONFIGS)
def test_forward_train_and_eval(config):
    torch.manual_seed(0)
    model, cfg = build_checked(config)
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES

    model.train()
    losses = model(_inputs(num_classes, with_targets=True))
    # loss_ce / loss_mask / loss_dice for the final prediction and each auxiliary one.
    names = ("loss_ce", "loss_mask", "loss_dice")
    expected = set(names) | {f"{n}_{i}" for n in names for i in range(num_aux(cfg))}
    if cfg.MODEL.get("MP_FORMER", {}).get("ENABLED", False):
        assert expected <= set(losses)  # plus the losses of the pilot (mask-piloted) queries
    else:
        assert set(losses) == expected
    assert all(torch.isfinite(v) for v in losses.values()), losses

    model.eval()
    test = cfg.MODEL.MASK_FORMER.TEST
    with torch.no_grad():
        outputs = model(_inputs(num_classes, with_targets=False))
    assert len(outputs) == 2
    for out in outputs:
        if test.SEMANTIC_ON:
            assert out["sem_seg"].shape == (num_classes, OUT_H, OUT_W)
        if test.PANOPTIC_ON:
            panoptic, segments = out["panoptic_seg"]
            assert panoptic.shape == (OUT_H, OUT_W)
            assert isinstance(segments, list)
        if test.INSTANCE_ON:
            assert out["instances"].image_size == (OUT_H, OUT_W)
            assert len(out["instances"]) <= cfg.TEST.DETECTIONS_PER_IMAGE
