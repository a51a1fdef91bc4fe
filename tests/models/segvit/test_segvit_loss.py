"""SegViT's loss: fixed class pairing, CE targets, ignore handling, perfect logits."""

import torch
from torch.nn import functional as F

from mask2former.models.segvit.loss import ATMCriterion, semantic_targets, sigmoid_focal_loss

K = 3
WEIGHTS = {"loss_ce": 1.0, "loss_mask": 20.0, "loss_dice": 1.0}


def criterion(**kwargs):
    return ATMCriterion(num_classes=K, weight_dict=WEIGHTS, eos_coef=0.1, **kwargs)


def label_map():
    """Image 0: class 0 on the left, class 2 on the right, an ignore strip; image 1: class 1."""
    labels = torch.zeros(2, 8, 8, dtype=torch.int64)
    labels[0, :, 4:] = 2
    labels[0, 0] = 255
    labels[1] = 1
    return labels


def test_targets_from_the_label_map():
    targets = semantic_targets(label_map(), 255)
    assert targets[0]["labels"].tolist() == [0, 2] and targets[1]["labels"].tolist() == [1]
    assert targets[0]["masks"].shape == (2, 8, 8)
    assert targets[0]["masks"][:, 0].sum() == 0  # ignore pixels are 0 in every class mask
    assert not targets[0]["valid"][0].any() and targets[0]["valid"][1:].all()


def test_query_c_is_paired_with_class_c_and_absent_classes_are_no_object():
    crit = criterion()
    targets = semantic_targets(label_map(), 255)
    indices = crit.matcher({}, targets)
    assert [q.tolist() for q, _ in indices] == [[0, 2], [1]]
    logits = torch.randn(2, K, K + 1)
    outputs = {"pred_logits": logits, "pred_masks": torch.zeros(2, K, 2, 2)}
    losses = crit(outputs, targets)
    # CE targets: image 0 -> [0, no-object, 2]; image 1 -> [no-object, 1, no-object].
    target = torch.tensor([[0, K, 2], [K, 1, K]])
    weight = torch.tensor([1.0, 1.0, 1.0, 0.1])
    expected = F.cross_entropy(logits.transpose(1, 2), target, weight)
    torch.testing.assert_close(losses["loss_ce"], expected)


def test_mask_losses_by_hand_at_label_resolution():
    crit = criterion()
    targets = semantic_targets(label_map(), 255)
    masks = torch.randn(2, K, 4, 4)
    losses = crit({"pred_logits": torch.zeros(2, K, K + 1), "pred_masks": masks}, targets)
    up = F.interpolate(masks, size=(8, 8), mode="bilinear", align_corners=False)
    src = torch.stack([up[0, 0], up[0, 2], up[1, 1]]).flatten(1)  # queries 0, 2 | 1
    tgt = torch.cat([t["masks"] for t in targets]).flatten(1)
    p = src.sigmoid()
    ce = F.binary_cross_entropy_with_logits(src, tgt, reduction="none")
    p_t = p * tgt + (1 - p) * (1 - tgt)
    focal = (0.25 * tgt + 0.75 * (1 - tgt)) * ce * (1 - p_t) ** 2
    torch.testing.assert_close(losses["loss_mask"], focal.mean(1).sum() / 3)
    dice = 1 - (2 * (p * tgt).sum(1) + 1) / (p.sum(1) + tgt.sum(1) + 1)
    torch.testing.assert_close(losses["loss_dice"], dice.sum() / 3)


def test_excluding_ignore_pixels_drops_them_from_focal_and_dice():
    targets = semantic_targets(label_map(), 255)
    masks = torch.randn(2, K, 8, 8)
    outputs = {"pred_logits": torch.zeros(2, K, K + 1), "pred_masks": masks}
    base = criterion()(outputs, targets)
    excluded = criterion(exclude_ignore=True)(outputs, targets)
    # Changing the predictions on ignore pixels changes only the reference's losses.
    changed = masks.clone()
    changed[0, :, 0] = 30.0
    outputs2 = {"pred_logits": outputs["pred_logits"], "pred_masks": changed}
    assert not torch.allclose(criterion()(outputs2, targets)["loss_mask"], base["loss_mask"])
    again = criterion(exclude_ignore=True)(outputs2, targets)
    for key in ("loss_mask", "loss_dice"):
        torch.testing.assert_close(again[key], excluded[key])
    valid = torch.ones(1, 64, dtype=torch.bool)
    valid[0, :8] = False
    x, t = torch.randn(1, 64), (torch.rand(1, 64) > 0.5).float()
    torch.testing.assert_close(sigmoid_focal_loss(x, t, 1.0, valid=valid),
                               sigmoid_focal_loss(x[:, 8:], t[:, 8:], 1.0))


def test_all_ignore_image_gives_only_class_loss():
    labels = torch.full((1, 8, 8), 255, dtype=torch.int64)
    masks = torch.randn(1, K, 4, 4, requires_grad=True)
    logits = torch.randn(1, K, K + 1, requires_grad=True)
    outputs = {"pred_logits": logits, "pred_masks": masks,
               "aux_outputs": [{"pred_logits": logits * 2, "pred_masks": masks * 2}]}
    losses = criterion()(outputs, semantic_targets(labels, 255))
    assert losses["loss_mask"] == 0 and losses["loss_dice"] == 0 and losses["loss_mask_0"] == 0
    expected = F.cross_entropy(logits.transpose(1, 2), torch.full((1, K), K),
                               torch.tensor([1.0, 1.0, 1.0, 0.1]))
    torch.testing.assert_close(losses["loss_ce"], expected)
    sum(losses.values()).backward()  # connected to the graph
    assert masks.grad is not None


def test_perfect_logits_give_near_zero_mask_losses():
    labels = label_map()
    targets = semantic_targets(labels, 255)
    masks = torch.full((2, K, 8, 8), -20.0)
    for b in range(2):
        for c in range(K):
            masks[b, c][labels[b] == c] = 20.0
    losses = criterion()({"pred_logits": torch.zeros(2, K, K + 1), "pred_masks": masks}, targets)
    assert losses["loss_mask"] < 1e-6 and losses["loss_dice"] < 1e-6
