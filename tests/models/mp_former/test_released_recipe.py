"""The released MP-Former recipe (the ``mp_former/`` configs: one group, no mask noise, all
layers piloted, no query positions): decoder outputs and losses against a reference whose MP
inputs are built by hand here, not by ``MaskPiloting``."""

import torch
import torch.nn.functional as F
from test_mp_former import (
    HEADS,
    LEVEL_SIZES,
    B,
    Q,
    pooled_reference,
    tiny_decoder,
    tiny_inputs,
    tiny_targets,
)

from mask2former.modeling.criterion import SetCriterion
from mask2former.modeling.matcher import HungarianMatcher


def reference_outputs(decoder, x, mask_features, targets):
    """Decode [MP slots; Q queries] with hand-built content, self-attention mask and
    cross-attention masks; returns (matching, MP) per prediction point."""
    counts = [len(t["labels"]) for t in targets]
    m = max(counts)  # one group: P = M slots
    weight = decoder.variant.label_enc.weight
    content = torch.zeros(m, B, weight.shape[1])  # (P, B, C)
    for b, t in enumerate(targets):
        content[: counts[b], b] = weight[t["labels"]]
    queries = decoder.query_feat.weight[:, None].repeat(1, B, 1)  # (Q, B, C)
    output = torch.cat([content, queries])  # (P+Q, B, C)
    self_mask = torch.zeros(m + Q, m + Q, dtype=torch.bool)
    self_mask[m:, :m] = True  # matching queries never see MP slots

    def cross_mask(layer, attn_mask, size):
        # GT cells of every MP slot at this level, the same for every head; padding: no cell.
        allowed = torch.zeros(B, m, size[0] * size[1], dtype=torch.bool)
        for b, t in enumerate(targets):
            allowed[b, : counts[b]] = pooled_reference(t["masks"], size)
        rows = attn_mask.view(B, HEADS, m + Q, -1).clone()
        rows[:, :, :m] = ~allowed[:, None]
        return rows.flatten(0, 1)

    memory = decoder._prepare_memory(x)
    classes, masks = decoder.decode(
        output, None, memory, mask_features, self_attn_mask=self_mask,
        cross_attn_mask_fn=cross_mask,
    )
    matching = [(c[:, m:], k[:, m:]) for c, k in zip(classes, masks)]
    piloted = [(c[:, :m], k[:, :m]) for c, k in zip(classes, masks)]
    return matching, piloted


def test_released_recipe_decoder_equals_hand_built_reference():
    decoder = tiny_decoder(mp=True, QUERY_POS="none", LABEL_NOISE_RATIO=0.0).train()
    assert decoder.query_embed is None
    x, mask_features = tiny_inputs()
    targets = tiny_targets((3, 1))
    out = decoder(x, mask_features, targets=targets)
    matching, piloted = reference_outputs(decoder, x, mask_features, targets)
    points = [*out["aux_outputs"], out]
    mp_points = [*out["mp_outputs"]["aux_outputs"], out["mp_outputs"]]
    assert len(points) == len(matching) == len(LEVEL_SIZES) * 2 + 1
    for o, (c, k) in zip(points, matching, strict=True):
        torch.testing.assert_close(o["pred_logits"], c, rtol=0, atol=1e-5)
        torch.testing.assert_close(o["pred_masks"], k, rtol=0, atol=1e-5)
    for o, (c, k) in zip(mp_points, piloted, strict=True):
        torch.testing.assert_close(o["pred_logits"], c, rtol=0, atol=1e-5)
        torch.testing.assert_close(o["pred_masks"], k, rtol=0, atol=1e-5)


def test_released_recipe_class_loss_equals_cross_entropy_by_hand():
    decoder = tiny_decoder(mp=True, QUERY_POS="none", LABEL_NOISE_RATIO=0.0).train()
    x, mask_features = tiny_inputs()
    targets = tiny_targets((3, 1))
    mp_out = decoder(x, mask_features, targets=targets)["mp_outputs"]
    num_classes = mp_out["pred_logits"].shape[-1] - 1
    criterion = SetCriterion(
        num_classes=num_classes,
        matcher=HungarianMatcher(cost_class=1.0, cost_mask=1.0, cost_dice=1.0, num_points=16),
        weight_dict={}, eos_coef=0.1, losses=["labels", "masks"], num_points=16,
        oversample_ratio=3.0, importance_sample_ratio=0.75,
    )
    losses = decoder.variant.loss(criterion, mp_out, targets)
    # Slot j of image b targets object j's class; padding slots target "no object".
    target_classes = torch.full((B, 3), num_classes)
    for b, t in enumerate(targets):
        target_classes[b, : len(t["labels"])] = t["labels"]
    class_weight = torch.ones(num_classes + 1)
    class_weight[-1] = 0.1
    expected = F.cross_entropy(mp_out["pred_logits"].transpose(1, 2), target_classes, class_weight)
    torch.testing.assert_close(losses["loss_ce_mp"], expected)
    assert set(losses) == set(decoder.variant.loss.weight_dict)
