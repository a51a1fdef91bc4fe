"""Every Transfiner config loads, carries the reference's values, and the DCN backbone works."""

from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_backbone
from torch.nn import functional as F

import mask2former  # noqa: F401  (registers the components)
from mask2former.config import load_config
from mask2former.models.transfiner.backbone import TorchvisionDeformConv

ROOT = Path(__file__).resolve().parents[3] / "configs"
CONFIGS = sorted(
    str(p) for p in ROOT.rglob("*.yaml")
    if "transfiner" in p.parts or p.name.startswith("transfiner_")
)
# file -> (depth, deformable, max iterations, steps) of the reference's configs
COCO = {
    "mask_rcnn_R_50_FPN_1x.yaml": (50, False, 90000, (60000, 80000)),
    "mask_rcnn_R_50_FPN_1x_deform.yaml": (50, True, 90000, (60000, 80000)),
    "mask_rcnn_R_50_FPN_3x.yaml": (50, False, 270000, (210000, 250000)),
    "mask_rcnn_R_50_FPN_3x_deform.yaml": (50, True, 270000, (210000, 250000)),
    "mask_rcnn_R_101_FPN_3x.yaml": (101, False, 270000, (210000, 250000)),
    "mask_rcnn_R_101_FPN_3x_deform.yaml": (101, True, 270000, (210000, 250000)),
}


def test_all_configs_are_found():
    names = {Path(c).name for c in CONFIGS}
    others = {"mask_rcnn_R_50_FPN.yaml", "transfiner_R18_synthetic.yaml",
              "mask_rcnn_swint_FPN_3x.yaml"}
    assert set(COCO) | others <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(Path(p).relative_to(ROOT)))
def test_config_loads_with_transfiner_heads(path):
    cfg = load_config(path)
    assert cfg.MODEL.ROI_HEADS.NAME == "TransfinerROIHeads"
    assert cfg.MODEL.ROI_MASK_HEAD.NAME == "TransfinerMaskHead"
    assert cfg.MODEL.MASK_ON
    name = Path(path).name
    if name in COCO:
        depth, deform, iters, steps = COCO[name]
        assert cfg.MODEL.RESNETS.DEPTH == depth and cfg.SOLVER.MAX_ITER == iters
        assert tuple(cfg.SOLVER.STEPS) == steps
        assert cfg.SOLVER.IMS_PER_BATCH == 16 and cfg.SOLVER.BASE_LR == 0.02
        assert (cfg.MODEL.BACKBONE.NAME == "build_resnet_fpn_backbone_tvdcn") == deform
        assert list(cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE) == [False, deform, deform, deform]
        t = cfg.MODEL.TRANSFINER
        assert (t.MAX_REFINE_ROIS_TRAIN, t.MAX_REFINE_ROIS_TEST) == (30, 10)
        assert tuple(t.INC_THRESH_TEST) == (1e-6, 0.125, 0.8)


def test_torchvision_dcn_backbone_runs_and_trains_on_the_cpu():
    cfg = load_config(str(ROOT / "coco/instance-segmentation/transfiner/"
                          "mask_rcnn_R_50_FPN_1x_deform.yaml"),
                      ["MODEL.RESNETS.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", "0"])
    backbone = build_backbone(cfg)
    convs = [m for m in backbone.modules() if isinstance(m, TorchvisionDeformConv)]
    assert len(convs) == 4 + 6 + 3  # every block of res3, res4, res5
    names = {n for n, _ in backbone.named_parameters()}
    # Detectron2's DCN parameter names: its DCN checkpoints load
    assert {"bottom_up.res3.0.conv2.weight", "bottom_up.res3.0.conv2_offset.weight"} <= names
    out = backbone(torch.randn(1, 3, 64, 64))
    sum(v.mean() for v in out.values()).backward()
    assert convs[0].weight.grad is not None and convs[0].weight.grad.abs().sum() > 0


@torch.no_grad()
def test_swin_fpn_backbone_gives_p2_to_p6():
    path = str(ROOT / "coco/instance-segmentation/transfiner/mask_rcnn_swint_FPN_3x.yaml")
    tiny = ["MODEL.SWIN.EMBED_DIM", "16", "MODEL.SWIN.DEPTHS", "[1, 1, 1, 1]",
            "MODEL.SWIN.NUM_HEADS", "[1, 1, 1, 1]", "MODEL.FPN.OUT_CHANNELS", "16"]
    cfg = load_config(path, tiny)
    backbone = build_backbone(cfg)
    out = backbone(torch.randn(1, 3, 64, 64))
    assert {k: tuple(v.shape[-2:]) for k, v in out.items()} == {
        "p2": (16, 16), "p3": (8, 8), "p4": (4, 4), "p5": (2, 2), "p6": (1, 1)}
    assert backbone.size_divisibility == 32


@torch.no_grad()
def test_zero_offsets_give_a_plain_convolution():
    conv = convs_one()
    x = torch.randn(2, 8, 9, 9)
    offset = torch.zeros(2, 18, 9, 9)
    torch.testing.assert_close(conv(x, offset), F.conv2d(x, conv.weight, padding=1))


def convs_one() -> TorchvisionDeformConv:
    from detectron2.layers.deform_conv import DeformConv

    return TorchvisionDeformConv(DeformConv(8, 4, kernel_size=3, padding=1, bias=False))
