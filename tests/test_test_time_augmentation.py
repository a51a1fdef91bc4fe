"""MaskFormerWithTTA against the plain model (random weights, tiny synthetic config)."""

import os

import pytest
import torch
from detectron2.modeling import build_model

from mask2former.config import load_config
from mask2former.test_time_augmentation import MaskFormerWithTTA

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(
    REPO, "configs", "synthetic", "panoptic-segmentation", "maskformer2_R18_synthetic.yaml"
)
TINY = [
    "MODEL.DEVICE", "cpu",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32", "MODEL.SEM_SEG_HEAD.MASK_DIM", "32",
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1",
    "MODEL.MASK_FORMER.HIDDEN_DIM", "32", "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "64",
    "MODEL.MASK_FORMER.DEC_LAYERS", "4", "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "8",
    "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD", "0.0",
    "MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD", "0.0",
    "TEST.AUG.MIN_SIZES", "(64,)", "TEST.AUG.MAX_SIZE", "1000",
]


def _model(tasks):
    switches = []
    for task in ("SEMANTIC", "INSTANCE", "PANOPTIC"):
        switches += [f"MODEL.MASK_FORMER.TEST.{task}_ON", str(task in tasks)]
    cfg = load_config(CONFIG, TINY + switches)
    torch.manual_seed(0)
    return cfg, build_model(cfg).eval()


def _input(seed=0):
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(seed)) * 255
    return {"image": image, "height": 64, "width": 64}


def _tta(cfg, model, flip):
    cfg = cfg.clone()
    cfg.TEST.AUG.FLIP = flip
    return MaskFormerWithTTA(cfg, model).eval()


@torch.no_grad()
@pytest.mark.parametrize("tasks", [("SEMANTIC",), ("SEMANTIC", "INSTANCE", "PANOPTIC")])
def test_single_augmentation_equals_the_model(tasks):
    cfg, model = _model(tasks)
    inputs = _input()
    expected = model([inputs])[0]
    result = _tta(cfg, model, flip=False)([inputs])[0]
    assert result.keys() == expected.keys()
    torch.testing.assert_close(result["sem_seg"], expected["sem_seg"], rtol=1e-4, atol=1e-5)
    if "PANOPTIC" in tasks:
        seg, info = result["panoptic_seg"]
        expected_seg, expected_info = expected["panoptic_seg"]
        assert torch.equal(seg, expected_seg) and info == expected_info
        assert len(expected_info) > 0
        # top-k is unsorted: compare the detections in score order.
        got, want = result["instances"], expected["instances"]
        got, want = got[got.scores.argsort()], want[want.scores.argsort()]
        torch.testing.assert_close(got.scores, want.scores, rtol=1e-4, atol=1e-6)
        assert torch.equal(got.pred_classes, want.pred_classes)
        assert torch.equal(got.pred_masks, want.pred_masks)


@torch.no_grad()
@pytest.mark.parametrize("tasks", [("SEMANTIC",), ("SEMANTIC", "PANOPTIC")])
def test_flip_is_undone_and_averaged(tasks):
    cfg, model = _model(tasks)
    inputs = _input(1)
    flipped = dict(inputs, image=inputs["image"].flip(-1))
    expected = (model([inputs])[0]["sem_seg"] + model([flipped])[0]["sem_seg"].flip(-1)) / 2
    result = _tta(cfg, model, flip=True)([inputs])[0]
    torch.testing.assert_close(result["sem_seg"], expected, rtol=1e-4, atol=1e-5)
