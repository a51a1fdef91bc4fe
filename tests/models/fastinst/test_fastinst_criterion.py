"""FastInst's location cost, pixel-level proposal matching, proposal loss and reused
assignments, on hand-built cases."""

import torch
import torch.nn.functional as F

from mask2former.models.fastinst.criterion import (
    FastInstCriterion,
    FastInstMatcher,
    location_cost,
)

K = 3
SIZE = 32  # padded input size of the GT masks


def two_squares():
    masks = torch.zeros(2, SIZE, SIZE)
    masks[0, 2:14, 2:14] = 1  # top-left
    masks[1, 18:30, 18:30] = 1  # bottom-right
    return [{"labels": torch.tensor([0, 1]), "masks": masks}]


def make_matcher(**kwargs):
    return FastInstMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=256, **kwargs)


def make_criterion():
    return FastInstCriterion(
        num_classes=K, matcher=make_matcher(), weight_dict={}, eos_coef=0.1,
        losses=["labels", "masks"], num_points=256, oversample_ratio=3.0,
        importance_sample_ratio=0.75,
    )


def test_location_cost_is_minus_one_inside():
    locations = torch.tensor([[0.25, 0.25], [0.75, 0.75], [0.25, 0.75]])  # (x, y)
    cost = location_cost(locations, two_squares()[0]["masks"])
    assert cost.tolist() == [[-1.0, 0.0], [0.0, -1.0], [0.0, 0.0]]


def test_location_cost_beats_the_class_cost():
    # Queries 0 and 1 are outside both objects but predict their classes perfectly; queries 2
    # (inside square 0) and 3 (inside square 1) predict them poorly. Masks are uninformative.
    logits = torch.full((1, 4, K + 1), -5.0)
    logits[0, 0, 0] = logits[0, 1, 1] = 5.0
    logits[0, 2, 0] = logits[0, 3, 1] = 0.0
    outputs = {
        "pred_logits": logits,
        "pred_masks": torch.zeros(1, 4, 8, 8),
        "query_locations": torch.tensor([[[0.5, 0.05], [0.05, 0.5], [0.25, 0.25], [0.75, 0.75]]]),
    }
    ((queries, gts),) = make_matcher()(outputs, two_squares())
    assert dict(zip(gts.tolist(), queries.tolist())) == {0: 2, 1: 3}
    ((queries, gts),) = make_matcher(cost_location=0.0)(outputs, two_squares())
    assert dict(zip(gts.tolist(), queries.tolist())) == {0: 0, 1: 1}  # without it: by class


def test_proposal_matching_picks_one_pixel_inside_each_object():
    torch.manual_seed(0)
    logits = torch.randn(1, K + 1, 8, 8)
    logits[0, 0, 0, 7] = 10.0  # a confident class-0 pixel outside object 0
    targets = two_squares()
    ((pixels, gts),) = make_matcher().match_proposals(logits, targets)
    assert sorted(gts.tolist()) == [0, 1]
    pooled = F.adaptive_avg_pool2d(targets[0]["masks"][None], (8, 8))[0].flatten(1) > 0
    for p, g in zip(pixels.tolist(), gts.tolist()):
        assert pooled[g, p]  # inside the object's pooled mask
    assert 7 not in pixels.tolist()


def test_proposal_loss_is_plain_cross_entropy_with_one_foreground_pixel_per_object():
    torch.manual_seed(0)
    logits = torch.randn(2, K + 1, 4, 4)
    targets = two_squares() + [{"labels": torch.zeros(0, dtype=torch.int64),
                                "masks": torch.zeros(0, SIZE, SIZE)}]
    none = torch.zeros(0, dtype=torch.int64)
    indices = [(torch.tensor([5, 15]), torch.tensor([1, 0])), (none, none)]
    loss = make_criterion().loss_proposals(logits, targets, indices)["loss_proposal"]
    expected_targets = torch.full((2, 16), K)
    expected_targets[0, 5], expected_targets[0, 15] = 1, 0
    by_hand = -logits.flatten(2).log_softmax(1).gather(1, expected_targets[:, None])[:, 0].mean()
    torch.testing.assert_close(loss, by_hand)


def test_given_matching_is_used_instead_of_matching_again():
    torch.manual_seed(0)
    criterion = make_criterion()
    targets = two_squares()
    outputs = {"pred_logits": torch.randn(1, 4, K + 1), "pred_masks": torch.randn(1, 4, 8, 8),
               "query_locations": torch.rand(1, 4, 2)}
    forced = [(torch.tensor([3, 0]), torch.tensor([0, 1]))]
    torch.manual_seed(1)
    given = criterion({**outputs, "pred_matching_indices": forced}, targets)
    torch.manual_seed(1)
    by_hand = criterion.get_losses_for_indices(outputs, targets, forced, 2.0)
    for k, v in by_hand.items():
        torch.testing.assert_close(given[k], v)


def test_forward_gives_main_aux_and_proposal_losses():
    torch.manual_seed(0)
    outputs = {"pred_logits": torch.randn(1, 4, K + 1), "pred_masks": torch.randn(1, 4, 8, 8),
               "query_locations": torch.rand(1, 4, 2),
               "proposal_cls_logits": torch.randn(1, K + 1, 2, 2)}
    outputs["aux_outputs"] = [dict(outputs) for _ in range(2)]
    losses = make_criterion()(outputs, two_squares())
    assert set(losses) == {"loss_ce", "loss_mask", "loss_dice", "loss_proposal",
                           "loss_ce_0", "loss_mask_0", "loss_dice_0",
                           "loss_ce_1", "loss_mask_1", "loss_dice_1"}
    assert all(torch.isfinite(v) for v in losses.values())
