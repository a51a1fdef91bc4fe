"""Post-processing on hand-made predictions with known answers."""

import math

import pytest
import torch

from mask2former.modeling.postprocessing import (
    instance_inference,
    panoptic_inference,
    semantic_inference,
)

ON, OFF = 20.0, -20.0  # mask logits with sigmoid ~1 / ~0


def _logits(*probs: float) -> list[float]:
    """Class logits whose softmax is exactly ``probs``."""
    assert math.isclose(sum(probs), 1.0)
    return [math.log(p) for p in probs]


def test_semantic_inference_known_values():
    mask_cls = torch.tensor([_logits(0.6, 0.3, 0.1), _logits(0.2, 0.2, 0.6)])  # Q=2, K=2
    mask_pred = torch.zeros(2, 2, 3)
    mask_pred[0, 0] = ON  # query 0 covers row 0
    mask_pred[1, :, 0] = ON  # query 1 covers column 0
    mask_pred[1, :, 1:] = OFF
    mask_pred[0, 1] = OFF
    sem = semantic_inference(mask_cls, mask_pred)
    assert sem.shape == (2, 2, 3)
    expected = torch.zeros(2, 2, 3)
    q0 = torch.tensor([[1.0, 1, 1], [0, 0, 0]])
    q1 = torch.tensor([[1.0, 0, 0], [1, 0, 0]])
    expected[0] = 0.6 * q0 + 0.2 * q1
    expected[1] = 0.3 * q0 + 0.2 * q1
    torch.testing.assert_close(sem, expected, atol=1e-6, rtol=0)


def _panoptic_case():
    """8x8 image, K=3 (class 0 thing, classes 1 and 2 stuff)."""
    h = w = 8
    regions = {
        "A": (slice(0, 8), slice(0, 3)),  # left band, 24 px
        "B": (slice(0, 4), slice(4, 8)),  # top right, 16 px
        "C": (slice(4, 8), slice(4, 8)),  # bottom right, 16 px
        "D": (slice(0, 2), slice(3, 4)),  # 2 px
        "E": (slice(2, 8), slice(3, 4)),  # 6 px
    }
    queries = [
        # (class probs over K+1, covered regions)
        (_logits(0.90, 0.04, 0.04, 0.02), "A"),  # thing, kept -> segment 1
        (_logits(0.02, 0.95, 0.02, 0.01), "B"),  # stuff 1, kept -> segment 2
        (_logits(0.05, 0.90, 0.03, 0.02), "C"),  # stuff 1 again -> merged into segment 2
        (_logits(0.10, 0.30, 0.50, 0.10), "E"),  # score 0.5 below threshold -> dropped
        (_logits(0.05, 0.05, 0.05, 0.85), "E"),  # "no object" wins -> dropped
        (_logits(0.05, 0.05, 0.85, 0.05), "AD"),  # mostly hidden by query 0 -> overlap drop
    ]
    mask_cls = torch.tensor([q[0] for q in queries])
    mask_pred = torch.full((len(queries), h, w), OFF)
    for i, (_, names) in enumerate(queries):
        for name in names:
            mask_pred[i][regions[name]] = ON
    return mask_cls, mask_pred, regions


def test_panoptic_inference_keep_merge_overlap():
    mask_cls, mask_pred, regions = _panoptic_case()
    seg, info = panoptic_inference(
        mask_cls, mask_pred, num_classes=3, object_mask_threshold=0.8,
        overlap_threshold=0.8, thing_ids=[0],
    )
    assert seg.dtype == torch.int32 and seg.shape == (8, 8)
    expected = torch.zeros(8, 8, dtype=torch.int32)
    expected[regions["A"]] = 1
    expected[regions["B"]] = 2
    expected[regions["C"]] = 2  # stuff of the same class merged
    # D (won by the overlap-dropped query) and E (dropped queries only) stay void.
    torch.testing.assert_close(seg, expected)
    assert info == [
        {"id": 1, "isthing": True, "category_id": 0},
        {"id": 2, "isthing": False, "category_id": 1},
    ]


def test_panoptic_inference_overlap_threshold_zero_keeps_partial_segment():
    mask_cls, mask_pred, regions = _panoptic_case()
    seg, info = panoptic_inference(
        mask_cls, mask_pred, num_classes=3, object_mask_threshold=0.8,
        overlap_threshold=0.0, thing_ids=[0],
    )
    assert [s["category_id"] for s in info] == [0, 1, 2]
    assert (seg[regions["D"]] == 3).all()


def test_panoptic_inference_thing_instances_are_not_merged():
    mask_cls, mask_pred, regions = _panoptic_case()
    seg, info = panoptic_inference(
        mask_cls, mask_pred, num_classes=3, object_mask_threshold=0.8,
        overlap_threshold=0.8, thing_ids=[0, 1],
    )
    assert [s["id"] for s in info] == [1, 2, 3]
    assert (seg[regions["C"]] == 3).all()


def test_panoptic_inference_nothing_kept():
    mask_cls = torch.tensor([_logits(0.1, 0.1, 0.8)] * 3)
    seg, info = panoptic_inference(
        mask_cls, torch.zeros(3, 4, 5), num_classes=2, object_mask_threshold=0.8,
        overlap_threshold=0.8, thing_ids=[],
    )
    assert info == [] and seg.shape == (4, 5) and not seg.any()


def _instance_case():
    mask_cls = torch.tensor([
        _logits(0.70, 0.20, 0.10),
        _logits(0.05, 0.60, 0.35),
        _logits(0.30, 0.40, 0.30),
    ])  # Q=3, K=2
    mask_pred = torch.full((3, 6, 6), OFF)
    mask_pred[0, 1:3, 2:5] = ON  # box (2, 1, 5, 3)
    mask_pred[1, 0:6, 0:1] = 0.0  # logit 0 is not foreground: empty mask
    mask_pred[2, 4:6, 0:6] = ON
    mask_pred[2, 5, 5] = 1.0  # foreground with sigmoid(1) < 1
    return mask_cls, mask_pred


def test_instance_inference_topk_labels_scores_boxes():
    mask_cls, mask_pred = _instance_case()
    inst = instance_inference(
        mask_cls, mask_pred, num_classes=2, test_topk_per_image=3, thing_ids=None,
        image_size=(6, 6),
    )
    assert inst.image_size == (6, 6) and len(inst) == 3
    # Top-3 of the (query, class) probabilities: (0,0)=0.7, (1,1)=0.6, (2,1)=0.4.
    order = inst.scores.argsort(descending=True)
    got = {(int(c), round(float(s), 4)) for c, s in zip(inst.pred_classes, inst.scores)}
    sig = torch.sigmoid(torch.tensor(ON)).item()
    mean2 = (11 * sig + torch.sigmoid(torch.tensor(1.0)).item()) / 12
    assert got == {
        (0, round(0.7 * sig, 4)),
        (1, 0.0),  # empty mask -> mask score 0
        (1, round(0.4 * mean2, 4)),
    }
    by_score = [(int(inst.pred_classes[i]), inst.pred_boxes.tensor[i].tolist()) for i in order]
    assert by_score[0] == (0, [2.0, 1.0, 5.0, 3.0])
    assert by_score[1] == (1, [0.0, 4.0, 6.0, 6.0])
    assert by_score[2] == (1, [0.0, 0.0, 0.0, 0.0])
    assert inst.pred_masks.shape == (3, 6, 6) and inst.pred_masks.dtype == torch.float32
    assert set(inst.pred_masks.unique().tolist()) <= {0.0, 1.0}


def test_instance_inference_uses_real_classes_only_and_filters_things():
    mask_cls, mask_pred = _instance_case()
    inst = instance_inference(
        mask_cls, mask_pred, num_classes=2, test_topk_per_image=100, thing_ids=[1],
        image_size=(6, 6),
    )
    # k is capped at Q*K = 6; only class 1 survives the thing filter.
    assert len(inst) == 3
    assert inst.pred_classes.tolist() == [1, 1, 1]


@pytest.mark.parametrize("k", [1, 2, 6])
def test_instance_inference_k(k):
    mask_cls, mask_pred = _instance_case()
    inst = instance_inference(
        mask_cls, mask_pred, num_classes=2, test_topk_per_image=k, thing_ids=None,
        image_size=(6, 6),
    )
    assert len(inst) == k
