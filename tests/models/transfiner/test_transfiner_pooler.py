"""The RoI feature pyramid: sizes, source FPN levels, per-image limits (spec 13.2)."""

import pytest
import torch
from detectron2.structures import Boxes

from mask2former.models.transfiner.pooler import TransfinerPooler, refine_subset


def _pooler(channels=8):
    pooler = TransfinerPooler(
        output_size=14, scales=(1 / 4, 1 / 8, 1 / 16, 1 / 32), sampling_ratio=0,
        pooler_type="ROIAlignV2", level_sizes=(28, 56, 112), channels=channels,
        num_refine_convs=4,
    )
    for m in pooler.conv_norm_relus_semantic:
        if isinstance(m, torch.nn.Conv2d):  # S = 0: P2' = P2, so pooled values name the level
            torch.nn.init.zeros_(m.weight)
            torch.nn.init.zeros_(m.bias)
    return pooler


def _features(channels=8, batch=1):
    # P2..P5 of a 256x256 image, each filled with its level number
    return [torch.full((batch, channels, 256 // s, 256 // s), float(lvl))
            for lvl, s in zip((2, 3, 4, 5), (4, 8, 16, 32))]


def test_refiner_layout_matches_the_reference():
    names = [n for n, _ in _pooler(256).conv_norm_relus_semantic.named_parameters()]
    assert names == [f"{i}.{p}" for i in (0, 2, 4, 6) for p in ("weight", "bias")]


@torch.no_grad()
def test_fine_poolings_come_from_one_two_three_levels_finer():
    sides = [32, 112, 224, 448]
    boxes = Boxes(torch.tensor([[0.0, 0.0, s, s] for s in sides]))
    out = _pooler()(_features(), [boxes], refine_limit=10)
    assert out.coarse.shape == (4, 8, 14, 14)
    assert [tuple(x.shape) for x in out.fine] == [(4, 8, 28, 28), (4, 8, 56, 56),
                                                  (4, 8, 112, 112)]
    # canonical levels k = floor(4 + log2(side / 224)) clamped to [2, 5]: 2, 3, 4, 5
    expected_coarse = [2, 3, 4, 5]
    got_coarse = out.coarse.amax(dim=(1, 2, 3)).round().tolist()
    assert got_coarse == expected_coarse
    for shift, fine in enumerate(out.fine, start=1):
        expected = [max(k - shift, 2) for k in expected_coarse]
        assert fine.amax(dim=(1, 2, 3)).round().tolist() == expected
    assert out.p2_residual.shape == (1, 8, 64, 64) and out.p2_stride == 4


@torch.no_grad()
def test_the_refine_limit_is_per_image():
    boxes = [Boxes(torch.tensor([[0.0, 0.0, 40.0, 40.0]] * n)) for n in (5, 3)]
    out = _pooler()(_features(batch=2), boxes, refine_limit=2)
    assert out.refine_index.tolist() == [0, 1, 5, 6]
    assert out.coarse.shape[0] == 8 and all(f.shape[0] == 4 for f in out.fine)


@pytest.mark.parametrize("counts,limit,expected", [
    ((3, 0, 2), 2, [0, 1, 3, 4]), ((1, 1), 0, []), ((), 5, []),
])
def test_refine_subset(counts, limit, expected):
    assert refine_subset(list(counts), limit, torch.device("cpu")).tolist() == expected


@torch.no_grad()
def test_no_boxes():
    out = _pooler()(_features(), [Boxes(torch.zeros(0, 4))], refine_limit=10)
    assert out.coarse.shape == (0, 8, 14, 14) and out.fine[2].shape == (0, 8, 112, 112)
