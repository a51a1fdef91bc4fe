"""SetCriterion: exact loss values, loss keys, normalisation, degenerate targets."""

import pytest
import torch
from torch.nn import functional as F

from mask2former.modeling import criterion as criterion_module
from mask2former.modeling.criterion import SetCriterion
from mask2former.modeling.matcher import HungarianMatcher

K = 3  # classes
NUM_AUX = 9


def _pixel_centres(h: int, w: int) -> torch.Tensor:
    ys, xs = torch.meshgrid(
        (torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij"
    )
    return torch.stack([xs.flatten(), ys.flatten()], dim=1)  # (h*w, 2)


def _criterion(num_points=16, eos_coef=0.1, aux=NUM_AUX, matcher=None):
    weight_dict = {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
    for i in range(aux):
        weight_dict.update({f"{k}_{i}": v for k, v in list(weight_dict.items())[:3]})
    return SetCriterion(
        num_classes=K,
        matcher=matcher or HungarianMatcher(
            cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=num_points
        ),
        weight_dict=weight_dict,
        eos_coef=eos_coef,
        losses=["labels", "masks"],
        num_points=num_points,
        oversample_ratio=3.0,
        importance_sample_ratio=0.75,
    )


def _outputs(batch=2, queries=5, h=6, w=8, aux=NUM_AUX, seed=0):
    g = torch.Generator().manual_seed(seed)

    def one():
        return {
            "pred_logits": torch.randn(batch, queries, K + 1, generator=g).requires_grad_(),
            "pred_masks": (torch.randn(batch, queries, h, w, generator=g) * 2).requires_grad_(),
        }

    out = one()
    out["aux_outputs"] = [one() for _ in range(aux)]
    return out


def _targets(counts, h=6, w=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "labels": torch.randint(K, (n,), generator=g),
            "masks": torch.rand(n, h, w, generator=g) > 0.5,
        }
        for n in counts
    ]


def test_empty_weight_buffer_is_persistent():
    crit = _criterion(eos_coef=0.25)
    torch.testing.assert_close(crit.empty_weight, torch.tensor([1.0, 1.0, 1.0, 0.25]))
    assert "empty_weight" in crit.state_dict()


def test_loss_labels_equals_manual_weighted_cross_entropy():
    crit = _criterion(eos_coef=0.1)
    out = _outputs(aux=0)
    targets = _targets([2, 1])
    indices = [(torch.tensor([3, 0]), torch.tensor([1, 0])), (torch.tensor([2]), torch.tensor([0]))]
    loss = crit.loss_labels(out, targets, indices, num_masks=3.0)["loss_ce"]

    target_classes = torch.full((2, 5), K)
    target_classes[0, 3] = targets[0]["labels"][1]
    target_classes[0, 0] = targets[0]["labels"][0]
    target_classes[1, 2] = targets[1]["labels"][0]
    log_prob = out["pred_logits"].log_softmax(-1)
    weights = torch.where(target_classes == K, 0.1, 1.0)
    nll = -log_prob.gather(-1, target_classes[..., None])[..., 0]
    expected = (weights * nll).sum() / weights.sum()
    torch.testing.assert_close(loss, expected)


def test_loss_masks_equals_dense_computation(monkeypatch):
    """With the sampled points replaced by every pixel centre, the point losses are exact."""
    h, w = 6, 8

    def all_pixels(coarse_logits, *args):
        return _pixel_centres(h, w)[None].expand(coarse_logits.shape[0], -1, -1)

    monkeypatch.setattr(criterion_module, "get_uncertain_point_coords_with_randomness", all_pixels)
    crit = _criterion()
    out = _outputs(aux=0, h=h, w=w)
    targets = _targets([2, 1], h=h, w=w)
    indices = [(torch.tensor([3, 0]), torch.tensor([1, 0])), (torch.tensor([2]), torch.tensor([0]))]
    num_masks = 2.5
    losses = crit.loss_masks(out, targets, indices, num_masks)

    preds = torch.stack([out["pred_masks"][0, 3], out["pred_masks"][0, 0], out["pred_masks"][1, 2]])
    tgts = torch.stack([targets[0]["masks"][1], targets[0]["masks"][0], targets[1]["masks"][0]])
    x, t = preds.flatten(1), tgts.flatten(1).float()
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none").mean(1).sum() / num_masks
    p = x.sigmoid()
    dice = (1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)).sum() / num_masks
    torch.testing.assert_close(losses["loss_mask"], bce)
    torch.testing.assert_close(losses["loss_dice"], dice)


def test_loss_masks_with_importance_sampling_counts_num_points():
    """Real sampler on logits 0 and empty targets: every sampled point gives the same value
    (zero padding of point_sample changes nothing here), so the result is exact."""
    num_points = 20
    crit = _criterion(num_points=num_points)
    out = {"pred_logits": torch.zeros(2, 3, K + 1), "pred_masks": torch.zeros(2, 3, 4, 4)}
    targets = [
        {"labels": torch.tensor([0, 1]), "masks": torch.zeros(2, 16, 16, dtype=torch.bool)},
        {"labels": torch.tensor([2]), "masks": torch.zeros(1, 16, 16, dtype=torch.bool)},
    ]
    indices = [(torch.tensor([2, 0]), torch.tensor([0, 1])), (torch.tensor([1]), torch.tensor([0]))]
    losses = crit.loss_masks(out, targets, indices, num_masks=2.0)
    log2 = torch.log(torch.tensor(2.0))
    torch.testing.assert_close(losses["loss_mask"], 3 * log2 / 2)
    dice = 1 - 1 / (0.5 * num_points + 1)
    torch.testing.assert_close(losses["loss_dice"], torch.tensor(3 * dice / 2))


def test_forward_gives_30_finite_loss_keys_and_gradients():
    crit = _criterion()
    out = _outputs()
    losses = crit(out, _targets([2, 3]))
    assert len(losses) == 30
    assert set(losses) == set(crit.weight_dict)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert out["pred_masks"].grad is not None
    assert all(a["pred_logits"].grad is not None for a in out["aux_outputs"])


@pytest.mark.parametrize("counts", [[0, 0], [0, 2]])
def test_images_without_targets_give_finite_losses(counts):
    crit = _criterion()
    out = _outputs(aux=2)
    losses = crit(out, _targets(counts))
    assert len(losses) == 9
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert torch.isfinite(out["pred_masks"].grad).all()
    assert out["pred_masks"].grad is not None
    if counts == [0, 0]:
        assert losses["loss_mask"] == 0 and losses["loss_dice"] == 0


def test_num_masks_is_counted_and_clamped():
    device = torch.device("cpu")
    assert SetCriterion.get_num_masks(_targets([2, 3]), device) == 5.0
    assert SetCriterion.get_num_masks(_targets([0, 0]), device) == 1.0


def test_forward_is_matcher_plus_get_losses_for_indices():
    """Composition contract used by follow-ups that fix the assignment themselves."""
    fixed = [(torch.tensor([1, 4]), torch.tensor([0, 1])), (torch.tensor([0]), torch.tensor([0]))]

    class FixedMatcher(torch.nn.Module):
        def forward(self, outputs, targets):
            return fixed

    crit = _criterion(matcher=FixedMatcher(), aux=1)
    out = _outputs(aux=1)
    targets = _targets([2, 1])
    torch.manual_seed(0)
    losses = crit(out, targets)
    torch.manual_seed(0)
    direct = crit.get_losses_for_indices(
        {k: v for k, v in out.items() if k != "aux_outputs"}, targets, fixed, 3.0
    )
    direct_aux = crit.get_losses_for_indices(out["aux_outputs"][0], targets, fixed, 3.0)
    for k, v in direct.items():
        torch.testing.assert_close(losses[k], v)
        torch.testing.assert_close(losses[f"{k}_0"], direct_aux[k])


def test_unknown_loss_name():
    with pytest.raises(ValueError):
        SetCriterion(
            num_classes=K, matcher=torch.nn.Identity(), weight_dict={}, eos_coef=0.1,
            losses=["labels", "boxes"], num_points=4, oversample_ratio=3.0,
            importance_sample_ratio=0.75,
        )
