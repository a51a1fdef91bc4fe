"""Hungarian matcher: cost terms, optimality against brute force, degenerate inputs."""

import itertools
import logging

import pytest
import torch
from detectron2.projects.point_rend.point_features import point_sample
from torch.nn import functional as F

import mask2former.modeling.matcher as matcher_module
from mask2former.modeling.matcher import HungarianMatcher

WEIGHTS = {"cost_class": 2.0, "cost_mask": 5.0, "cost_dice": 5.0}


def _pixel_centres(h: int, w: int) -> torch.Tensor:
    """(h*w, 2) normalised (x, y) coordinates of every pixel centre."""
    ys, xs = torch.meshgrid(
        (torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij"
    )
    return torch.stack([xs.flatten(), ys.flatten()], dim=1)


def _naive_cost(logits, pred_masks, labels, tgt_masks):
    """Pair-by-pair dense cost (predictions and targets at the same resolution)."""
    q, g = logits.shape[0], labels.shape[0]
    prob = logits.softmax(-1)
    cost = torch.zeros(q, g, dtype=torch.float64)
    for i in range(q):
        x = pred_masks[i].flatten().double()
        p = x.sigmoid()
        for j in range(g):
            t = tgt_masks[j].flatten().double()
            bce = F.binary_cross_entropy_with_logits(x, t)
            dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
            cost[i, j] = (
                WEIGHTS["cost_class"] * -prob[i, labels[j]]
                + WEIGHTS["cost_mask"] * bce
                + WEIGHTS["cost_dice"] * dice
            )
    return cost


def _brute_force(cost: torch.Tensor) -> float:
    """Minimum total cost over all one-to-one assignments of min(Q, G) pairs."""
    if cost.shape[0] < cost.shape[1]:
        cost = cost.T
    q, g = cost.shape
    return min(
        sum(float(cost[perm[j], j]) for j in range(g))
        for perm in itertools.permutations(range(q), g)
    )


def test_cost_matrix_equals_dense_computation_at_pixel_centres():
    torch.manual_seed(0)
    matcher = HungarianMatcher(**WEIGHTS, num_points=16)
    logits = torch.randn(4, 6)
    pred_masks = torch.randn(4, 5, 7) * 3
    labels = torch.tensor([2, 0, 2])
    tgt_masks = torch.rand(3, 5, 7) > 0.5
    cost = matcher.cost_matrix(logits, pred_masks, labels, tgt_masks, _pixel_centres(5, 7))
    assert cost.dtype == torch.float32 and cost.shape == (4, 3)
    torch.testing.assert_close(
        cost.double(), _naive_cost(logits, pred_masks, labels, tgt_masks), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("num_queries,num_gts", [(1, 1), (3, 2), (4, 3), (5, 3), (5, 1), (2, 3)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matching_is_optimal(monkeypatch, num_queries, num_gts, seed):
    # Sampling every pixel centre (predictions and targets at the same resolution) makes the
    # cost deterministic and equal to the dense one, so the forward pass can be compared with
    # a brute force over all assignments.
    g = torch.Generator().manual_seed(seed)
    num_classes, batch, h, w = 4, 2, 4, 6
    logits = torch.randn(batch, num_queries, num_classes + 1, generator=g) * 2
    pred_masks = torch.randn(batch, num_queries, h, w, generator=g) * 3
    targets = [
        {
            "labels": torch.randint(num_classes, (num_gts,), generator=g),
            "masks": torch.rand(num_gts, h, w, generator=g) > 0.5,
        }
        for _ in range(batch)
    ]
    matcher = HungarianMatcher(**WEIGHTS, num_points=h * w)
    monkeypatch.setattr(matcher, "sample_points", lambda device: _pixel_centres(h, w))
    indices = matcher({"pred_logits": logits, "pred_masks": pred_masks}, targets)
    assert len(indices) == batch
    num_matched = min(num_queries, num_gts)
    for b, (i, j) in enumerate(indices):
        assert i.dtype == j.dtype == torch.int64
        assert len(i) == len(j) == num_matched
        assert len(set(i.tolist())) == len(set(j.tolist())) == num_matched
        cost = _naive_cost(logits[b], pred_masks[b], targets[b]["labels"], targets[b]["masks"])
        matched = float(cost[i, j].sum())
        assert matched == pytest.approx(_brute_force(cost), abs=1e-4)


def test_random_points_are_shared_and_in_unit_square(monkeypatch):
    # Record every point_sample call of a real forward pass: per image, the predicted masks
    # (1, Q, h, w) and the ground-truth masks (1, G, H, W), each stacked as the channels of one
    # image, must be read at the very same points.
    calls = []

    def recording_point_sample(masks, coords, **kwargs):
        calls.append((masks.shape, coords.clone()))
        return point_sample(masks, coords, **kwargs)

    monkeypatch.setattr(matcher_module, "point_sample", recording_point_sample)
    num_points, num_queries, batch = 50, 3, 2
    matcher = HungarianMatcher(**WEIGHTS, num_points=num_points)
    outputs = {"pred_logits": torch.randn(batch, num_queries, 5),
               "pred_masks": torch.randn(batch, num_queries, 4, 6)}
    targets = [{"labels": torch.tensor([0, 1]), "masks": torch.rand(2, 16, 24) > 0.5}
               for _ in range(batch)]
    matcher(outputs, targets)

    assert len(calls) == 2 * batch  # one call for the predictions, one for the targets
    per_image = []
    for (pred_shape, pred_coords), (tgt_shape, tgt_coords) in zip(calls[0::2], calls[1::2]):
        assert pred_shape == (1, num_queries, 4, 6) and tgt_shape == (1, 2, 16, 24)
        assert pred_coords.shape == (1, num_points, 2) and tgt_coords.shape == (1, num_points, 2)
        points = pred_coords[0]  # (P, 2)
        # Shared by every prediction and every ground truth of the image.
        assert torch.equal(tgt_coords[0], points)
        assert points.min() >= 0 and points.max() <= 1
        per_image.append(points)
    # Drawn afresh for each image, not fixed.
    assert not torch.equal(per_image[0], per_image[1])


def test_empty_targets_give_empty_indices():
    matcher = HungarianMatcher(**WEIGHTS, num_points=10)
    outputs = {"pred_logits": torch.randn(2, 3, 3), "pred_masks": torch.randn(2, 3, 4, 4)}
    targets = [
        {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 16, 16)},
        {"labels": torch.tensor([1]), "masks": torch.ones(1, 16, 16)},
    ]
    (i0, j0), (i1, j1) = matcher(outputs, targets)
    assert i0.numel() == j0.numel() == 0 and i0.dtype == torch.int64
    assert len(i1) == len(j1) == 1


def test_non_finite_costs_are_replaced_and_warned(caplog):
    matcher = HungarianMatcher(**WEIGHTS, num_points=10)
    logits = torch.randn(1, 4, 3)
    logits[0, 1] = float("nan")  # query 1 diverged
    pred_masks = torch.randn(1, 4, 4, 4)
    pred_masks[0, 2] = float("inf")  # so did query 2's mask
    targets = [{"labels": torch.tensor([0, 1]), "masks": torch.ones(2, 8, 8)}]
    with caplog.at_level(logging.WARNING, logger="mask2former.modeling.matcher"):
        ((i, j),) = matcher({"pred_logits": logits, "pred_masks": pred_masks}, targets)
    # The finite queries 0 and 3 are preferred.
    assert sorted(i.tolist()) == [0, 3] and sorted(j.tolist()) == [0, 1]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "4 non-finite" in warnings[0].getMessage()


def test_all_costs_non_finite_still_matches(caplog):
    matcher = HungarianMatcher(**WEIGHTS, num_points=10)
    outputs = {
        "pred_logits": torch.full((1, 3, 3), float("nan")),
        "pred_masks": torch.randn(1, 3, 4, 4),
    }
    targets = [{"labels": torch.tensor([0, 1]), "masks": torch.ones(2, 8, 8)}]
    with caplog.at_level(logging.WARNING, logger="mask2former.modeling.matcher"):
        ((i, j),) = matcher(outputs, targets)
    assert len(i) == 2
    assert "6 non-finite" in caplog.text


def test_invalid_arguments():
    with pytest.raises(ValueError):
        HungarianMatcher(cost_class=0, cost_mask=0, cost_dice=0, num_points=4)
    with pytest.raises(ValueError):
        HungarianMatcher(**WEIGHTS, num_points=0)


@pytest.mark.parametrize("scale", [1.0, 40.0])
def test_bce_cost_equals_pairwise_bce_with_soft_targets_and_large_logits(scale):
    torch.manual_seed(1)
    inputs = torch.randn(5, 50) * scale  # (N, P) logits up to hundreds: softplus must not overflow
    targets = torch.rand(3, 50)  # (M, P) soft targets, as bilinear sampling of binary masks gives
    expected = torch.stack(
        [
            torch.stack([F.binary_cross_entropy_with_logits(x, t) for t in targets.double()])
            for x in inputs.double()
        ]
    )  # (N, M)
    cost = matcher_module.batch_sigmoid_ce_cost(inputs, targets)
    torch.testing.assert_close(cost.double(), expected, rtol=1e-5, atol=1e-5 * scale)
