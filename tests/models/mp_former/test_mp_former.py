"""MP-Former's piloting in the decoder (mask2former/models/mp_former): parity with
Mask2Former, isolation of the matching queries, attention masks, noise, checkpoints. Tiny sizes
on CPU; losses, full-model training and configs are in test_mp_former_training.py."""

import logging
import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg

from mask2former import add_maskformer2_config
from mask2former.models.mask2former import build_transformer_decoder
from mask2former.models.mask2former.transformer_decoder.mask2former_transformer_decoder import (
    mask_logits_to_attn_mask,
    unmask_fully_masked_rows,
)
from mask2former.models.mp_former import MaskPiloting

B, Q, K, C, HEADS, MASK_DIM = 2, 5, 3, 16, 4, 8
LEVEL_SIZES = [(2, 3), (3, 4), (5, 6)]  # 1/32, 1/16, 1/8
MASK_HW = (10, 12)  # 1/4
INPUT_HW = (40, 48)  # padded input size of the GT masks


def decoder_cfg(mp=True, dec_layers=7, **mp_keys):
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    mf = cfg.MODEL.MASK_FORMER
    mf.HIDDEN_DIM, mf.NUM_OBJECT_QUERIES, mf.NHEADS, mf.DIM_FEEDFORWARD = C, Q, HEADS, 32
    mf.DEC_LAYERS = dec_layers
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = K
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = MASK_DIM
    cfg.MODEL.MP_FORMER.ENABLED = mp
    for key, value in mp_keys.items():  # QUERY_POS is a decoder key
        setattr(mf if key == "QUERY_POS" else cfg.MODEL.MP_FORMER, key, value)
    return cfg


def tiny_decoder(mp=True, dec_layers=7, **mp_keys):
    torch.manual_seed(0)
    return build_transformer_decoder(decoder_cfg(mp, dec_layers, **mp_keys), C, True)


def tiny_inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = [torch.randn(B, C, h, w, generator=gen) for h, w in LEVEL_SIZES]
    return x, torch.randn(B, MASK_DIM, *MASK_HW, generator=gen)


def box_mask(y0, y1, x0, x1):
    mask = torch.zeros(INPUT_HW, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return mask


def tiny_targets(counts=(3, 1), seed=1):
    """Per image, ``n`` box masks at random places (never empty) and random labels."""
    gen = torch.Generator().manual_seed(seed)
    targets = []
    for n in counts:
        masks = []
        for _ in range(n):
            y0 = int(torch.randint(0, 30, (1,), generator=gen))
            x0 = int(torch.randint(0, 38, (1,), generator=gen))
            h, w = (int(v) for v in torch.randint(3, 10, (2,), generator=gen))
            masks.append(box_mask(y0, y0 + h, x0, x0 + w))
        masks = torch.stack(masks) if masks else torch.zeros((0, *INPUT_HW), dtype=torch.bool)
        labels = torch.randint(0, K, (n,), generator=gen)
        targets.append({"labels": labels, "masks": masks})
    return targets


def pooled_reference(masks, size):
    """Cells holding any GT pixel, computed another way (adaptive max pooling): (n, h*w)."""
    return (F.adaptive_max_pool2d(masks[:, None].float(), size) > 0).flatten(1)


def capture(decoder):
    """Record the cross-attention masks and self-attention masks, in call order."""
    calls = {"cross": [], "self": []}

    def hook(kind):
        def pre_hook(module, args, kwargs):
            calls[kind].append(kwargs["attn_mask"])

        return pre_hook

    for layer in decoder.transformer_cross_attention_layers:
        layer.multihead_attn.register_forward_pre_hook(hook("cross"), with_kwargs=True)
    for layer in decoder.transformer_self_attention_layers:
        layer.self_attn.register_forward_pre_hook(hook("self"), with_kwargs=True)
    return calls


def predictions(out):
    return [*out["aux_outputs"], out]


# ---------------------------------------------------------------------------- (1) parity


def test_same_weights_with_and_without_mp():
    plain, piloted = tiny_decoder(mp=False).state_dict(), tiny_decoder(mp=True).state_dict()
    assert set(piloted) - set(plain) == {"variant.label_enc.weight"}
    assert set(plain) <= set(piloted)
    assert all(torch.equal(plain[k], piloted[k]) for k in plain)


@pytest.mark.parametrize("training", [False, True])
def test_mp_off_or_eval_is_bit_identical(training):
    plain, piloted = tiny_decoder(mp=False), tiny_decoder(mp=True)
    x, mask_features = tiny_inputs()
    targets = tiny_targets()
    reference = plain.train(training)(x, mask_features)
    # MP off ignores targets; MP on in eval mode ignores them too.
    off = plain(x, mask_features, targets=targets)
    on = piloted.eval()(x, mask_features, targets=targets) if not training else None
    for out in [off] + ([on] if on is not None else []):
        assert "mp_outputs" not in out
        for r, o in zip(predictions(reference), predictions(out), strict=True):
            assert torch.equal(r["pred_logits"], o["pred_logits"])
            assert torch.equal(r["pred_masks"], o["pred_masks"])


def test_training_matching_branch_equals_mask2former():
    plain, piloted = tiny_decoder(mp=False).train(), tiny_decoder(mp=True).train()
    x, mask_features = tiny_inputs()
    reference = plain(x, mask_features)
    out = piloted(x, mask_features, targets=tiny_targets())
    assert "mp_outputs" in out
    for r, o in zip(predictions(reference), predictions(out), strict=True):
        torch.testing.assert_close(o["pred_logits"], r["pred_logits"], rtol=0, atol=1e-5)
        torch.testing.assert_close(o["pred_masks"], r["pred_masks"], rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------- (2) isolation


def test_matching_queries_do_not_see_piloted_inputs():
    decoder = tiny_decoder(mp=True).train()
    x, mask_features = tiny_inputs()
    targets = tiny_targets()
    torch.manual_seed(3)
    out_a = decoder(x, mask_features, targets=targets)
    with torch.no_grad():
        decoder.variant.label_enc.weight.normal_()
    other = [{"labels": (t["labels"] + 1) % K, "masks": t["masks"].flip(-1)} for t in targets]
    torch.manual_seed(3)
    out_b = decoder(x, mask_features, targets=other)
    mp_a, mp_b = out_a["mp_outputs"]["pred_masks"], out_b["mp_outputs"]["pred_masks"]
    assert not torch.allclose(mp_a, mp_b)  # the perturbation reached the MP queries
    for a, b in zip(predictions(out_a), predictions(out_b), strict=True):
        assert torch.equal(a["pred_logits"], b["pred_logits"])
        assert torch.equal(a["pred_masks"], b["pred_masks"])


@pytest.mark.parametrize("num_groups", [1, 2])
def test_cross_attention_confined_to_gt_masks(num_groups):
    decoder = tiny_decoder(mp=True, NUM_GROUPS=num_groups, LABEL_NOISE_RATIO=0.0).train()
    calls = capture(decoder)
    counts = (3, 1)
    targets = tiny_targets(counts)
    decoder(*tiny_inputs(), targets=targets)
    m = max(counts)
    p = num_groups * m
    assert len(calls["cross"]) == decoder.num_layers
    for layer, attn_mask in enumerate(calls["cross"]):
        size = LEVEL_SIZES[layer % 3]
        rows = attn_mask.view(B, HEADS, p + Q, size[0] * size[1])  # (B, heads, P+Q, hw)
        for b, n in enumerate(counts):
            allowed = pooled_reference(targets[b]["masks"], size)  # (n, hw)
            for g in range(num_groups):
                real = rows[b, :, g * m : g * m + n]  # (heads, n, hw)
                assert torch.equal(real, (~allowed)[None].expand_as(real))
                padding = rows[b, :, g * m + n : (g + 1) * m]
                assert not padding.any()  # all blocked -> attend everywhere


def test_pilot_first_layers_only():
    decoder = tiny_decoder(mp=True, dec_layers=7, PILOT_ALL_LAYERS=False).train()
    calls = capture(decoder)
    counts = (3, 1)
    targets = tiny_targets(counts)
    out = decoder(*tiny_inputs(), targets=targets)
    mp_points = predictions(out["mp_outputs"])
    p = max(counts)
    for layer, attn_mask in enumerate(calls["cross"]):
        size = LEVEL_SIZES[layer % 3]
        mp_rows = attn_mask.view(B, HEADS, p + Q, -1)[:, :, :p]
        if layer < 4:
            allowed = pooled_reference(targets[0]["masks"], size)
            assert torch.equal(mp_rows[0, 0, :3], ~allowed)
        else:
            # From the MP queries' own predictions at the previous point.
            own = mask_logits_to_attn_mask(mp_points[layer]["pred_masks"], size, HEADS)
            assert torch.equal(mp_rows.flatten(0, 1), unmask_fully_masked_rows(own))


def test_self_attention_mask_isolates_groups():
    num_groups, counts = 3, (2, 1)
    decoder = tiny_decoder(mp=True, NUM_GROUPS=num_groups).train()
    calls = capture(decoder)
    decoder(*tiny_inputs(), targets=tiny_targets(counts))
    m = max(counts)
    p = num_groups * m
    expected = torch.zeros(p + Q, p + Q, dtype=torch.bool)
    for r in range(p + Q):
        for c in range(p):
            expected[r, c] = r >= p or r // m != c // m
    assert len(calls["self"]) == decoder.num_layers
    for attn_mask in calls["self"]:
        assert torch.equal(attn_mask, expected)


# ---------------------------------------------------------------------------- (4) noise


def binomial_bound(n, p, sigmas=5.0):
    return sigmas * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("per_head", [False, True])
def test_point_noise_flips_the_configured_fraction(per_head):
    ratio, size, n = 0.3, (32, 32), 60
    piloting = MaskPiloting(num_classes=K, hidden_dim=C, num_heads=HEADS,
                            mask_noise_ratio=ratio, per_head_noise=per_head)
    gen = torch.Generator().manual_seed(0)
    masks = torch.zeros(n, 64, 64, dtype=torch.bool)
    for i in range(n):  # a 16x32 box on even rows: area fraction 1/8 at the 32x32 level
        y0 = 2 * int(torch.randint(0, 24, (1,), generator=gen))
        masks[i, y0 : y0 + 16, 16:48] = True
    targets = [{"labels": torch.zeros(n, dtype=torch.int64), "masks": masks}]
    plan = piloting.plan(targets, [size], num_queries=Q)
    clean = plan.level_masks[0]  # (1, n, hw)
    fraction = clean.float().mean(-1)
    assert torch.allclose(fraction, torch.full_like(fraction, 1 / 8))
    torch.manual_seed(0)
    blocked = piloting.blocked_rows(plan, 0)  # (1, heads or 1, n, hw)
    assert blocked.shape[1] == (HEADS if per_head else 1)
    flipped = blocked == clean[:, None]  # blocked == allowed means the cell flipped
    rate = ratio / 8
    cells = flipped.numel()
    assert abs(flipped.sum().item() - cells * rate) < binomial_bound(cells, rate)
    # Flips hit both inside (holes) and outside (spurious cells) of the masks.
    inside = flipped & clean[:, None]
    outside = flipped & ~clean[:, None]
    assert abs(inside.sum().item() - inside.numel() / 8 * rate) < binomial_bound(
        inside.numel() / 8, rate)
    assert outside.any()
    if per_head:
        assert not torch.equal(blocked[:, 0], blocked[:, 1])
    assert not torch.equal(blocked, piloting.blocked_rows(plan, 0))  # fresh noise per call


def test_label_noise_flips_the_configured_fraction():
    ratio, num_classes, n = 0.2, 5, 20000
    piloting = MaskPiloting(num_classes=num_classes, hidden_dim=C, num_heads=HEADS,
                            label_noise_ratio=ratio)
    labels = torch.arange(n) % num_classes
    torch.manual_seed(0)
    noisy = piloting.noisy_labels(labels)
    assert noisy.min() >= 0 and noisy.max() < num_classes
    # A replaced label is uniform over all K classes, so it changes w.p. ratio * (K-1)/K.
    rate = ratio * (num_classes - 1) / num_classes
    changed = (noisy != labels).sum().item()
    assert abs(changed - n * rate) < binomial_bound(n, rate)
    off = MaskPiloting(num_classes=num_classes, hidden_dim=C, num_heads=HEADS,
                       label_noise_ratio=0.0)
    assert torch.equal(off.noisy_labels(labels), labels)


def test_group_budget_rule():
    piloting = MaskPiloting(num_classes=K, hidden_dim=C, num_heads=HEADS, num_groups=100)
    assert piloting.groups_for(3) == 33
    assert piloting.groups_for(101) == 0  # more objects than the budget: no MP queries
    assert piloting.groups_for(0) == 0  # no ZeroDivisionError on empty batches
    assert piloting.plan(tiny_targets((0, 0)), LEVEL_SIZES, Q) is None
    plan = piloting.plan(tiny_targets((3, 1)), LEVEL_SIZES, Q)
    assert plan.num_groups == 33 and plan.num_slots == 99
    assert plan.content.shape == (99, B, C)


def test_hundreds_of_objects():
    decoder = tiny_decoder(mp=True, dec_layers=4).train()
    counts = (250, 3)
    gen = torch.Generator().manual_seed(0)
    targets = [{"labels": torch.randint(0, K, (n,), generator=gen),
                "masks": torch.rand(n, *INPUT_HW, generator=gen) > 0.9} for n in counts]
    out = decoder(*tiny_inputs(), targets=targets)
    assert out["pred_masks"].shape == (B, Q, *MASK_HW)
    assert out["mp_outputs"]["pred_masks"].shape == (B, 250, *MASK_HW)
    assert [len(s) for s, _ in out["mp_outputs"]["indices"]] == [250, 3]


def test_plan_slots_labels_and_content():
    piloting = MaskPiloting(num_classes=K, hidden_dim=C, num_heads=HEADS, num_groups=2,
                            label_noise_ratio=0.0)
    targets = tiny_targets((3, 1))
    plan = piloting.plan(targets, LEVEL_SIZES, Q)
    assert plan.max_objects == 3 and plan.num_slots == 6
    assert [s.tolist() for s, _ in plan.indices] == [[0, 1, 2, 3, 4, 5], [0, 3]]
    assert [t.tolist() for _, t in plan.indices] == [[0, 1, 2, 0, 1, 2], [0, 0]]
    weight = piloting.label_enc.weight
    for b, (slots, objects) in enumerate(plan.indices):
        for s, j in zip(slots.tolist(), objects.tolist()):
            assert torch.equal(plan.content[s, b], weight[targets[b]["labels"][j]])
    assert not plan.content[[1, 2, 4, 5], 1].any()  # padding slots are zeros


def test_invalid_settings_raise():
    with pytest.raises(ValueError, match="NUM_GROUPS"):
        MaskPiloting(num_classes=K, hidden_dim=C, num_heads=HEADS, num_groups=0)
    with pytest.raises(ValueError, match="MASK_NOISE_RATIO"):
        MaskPiloting(num_classes=K, hidden_dim=C, num_heads=HEADS, mask_noise_ratio=2.0)
    with pytest.raises(ValueError, match="QUERY_POS"):
        build_transformer_decoder(decoder_cfg(QUERY_POS="sine"), C, True)


# ---------------------------------------------------------------------------- (7) checkpoints


def test_mp_checkpoint_loads_into_plain_model(caplog):
    state = tiny_decoder(mp=True).state_dict()
    plain = tiny_decoder(mp=False)
    with caplog.at_level(logging.INFO):
        plain.load_state_dict(state, strict=True)  # no unexpected key
    assert "label embedding" in caplog.text
    assert torch.equal(plain.query_feat.weight, state["query_feat.weight"])


def test_fork_checkpoint_loads_with_query_pos_none(caplog):
    state = tiny_decoder(mp=True).state_dict()
    fork = {("label_enc.weight" if k == "variant.label_enc.weight" else k): v
            for k, v in state.items() if k != "query_embed.weight"}
    decoder = tiny_decoder(mp=True, QUERY_POS="none")
    assert decoder.query_embed is None
    decoder.load_state_dict(fork, strict=True)
    assert torch.equal(decoder.variant.label_enc.weight, fork["label_enc.weight"])
    # Plain Mask2Former without query positions, for inference.
    tiny_decoder(mp=False, QUERY_POS="none").load_state_dict(fork, strict=True)
    # With learned positions the fork checkpoint is recognised and a warning says what to do.
    with caplog.at_level(logging.WARNING):
        result = tiny_decoder(mp=True).load_state_dict(fork, strict=False)
    assert result.missing_keys == ["query_embed.weight"]
    assert "QUERY_POS" in caplog.text


def test_earlier_piloting_key_loads():
    state = tiny_decoder(mp=True).state_dict()
    old = {("piloting.label_enc.weight" if k == "variant.label_enc.weight" else k): v
           for k, v in state.items()}
    decoder = tiny_decoder(mp=True)
    decoder.load_state_dict(old, strict=True)
    assert torch.equal(decoder.variant.label_enc.weight, state["variant.label_enc.weight"])


def test_query_pos_none_trains_and_infers():
    decoder = tiny_decoder(mp=True, QUERY_POS="none").train()
    out = decoder(*tiny_inputs(), targets=tiny_targets())
    assert out["mp_outputs"]["pred_masks"].shape == (B, 3, *MASK_HW)
    assert decoder.eval()(*tiny_inputs())["pred_masks"].shape == (B, Q, *MASK_HW)
