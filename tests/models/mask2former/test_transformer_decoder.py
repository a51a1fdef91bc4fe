"""Masked-attention transformer decoder, tiny sizes on CPU."""

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from torch import nn

from mask2former import add_maskformer2_config
from mask2former.models.mask2former import build_transformer_decoder
from mask2former.models.mask2former.transformer_decoder.mask2former_transformer_decoder import (
    unmask_fully_masked_rows,
)

B, Q, K, C, HEADS, MASK_DIM = 2, 5, 3, 16, 2, 8
LEVEL_SIZES = [(2, 3), (3, 4), (5, 6)]  # 1/32, 1/16, 1/8 (distinct lengths 6, 12, 30)
MASK_HW = (10, 12)


def tiny_decoder(dec_layers=7, pre_norm=False, in_channels=C, enforce_input_proj=False):
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    mf = cfg.MODEL.MASK_FORMER
    mf.HIDDEN_DIM, mf.NUM_OBJECT_QUERIES, mf.NHEADS, mf.DIM_FEEDFORWARD = C, Q, HEADS, 32
    mf.DEC_LAYERS, mf.PRE_NORM, mf.ENFORCE_INPUT_PROJ = dec_layers, pre_norm, enforce_input_proj
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = K
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = MASK_DIM
    torch.manual_seed(0)
    return build_transformer_decoder(cfg, in_channels, mask_classification=True)


def tiny_inputs(in_channels=C, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = [torch.randn(B, in_channels, h, w, generator=gen) for h, w in LEVEL_SIZES]
    return x, torch.randn(B, MASK_DIM, *MASK_HW, generator=gen)


def capture_cross_attention(decoder):
    """Record kwargs and output of every cross-attention call, in call order."""
    calls = []

    def pre_hook(module, args, kwargs):
        calls.append({"layer": module.layer_index, **kwargs})

    def hook(module, args, kwargs, output):
        calls[-1]["output"] = output[0]

    for i, layer in enumerate(decoder.transformer_cross_attention_layers):
        layer.multihead_attn.layer_index = i
        layer.multihead_attn.register_forward_pre_hook(pre_hook, with_kwargs=True)
        layer.multihead_attn.register_forward_hook(hook, with_kwargs=True)
    return calls


def all_predictions(out):
    return [
        *out["aux_outputs"],
        {"pred_logits": out["pred_logits"], "pred_masks": out["pred_masks"]},
    ]


def test_shapes_and_number_of_prediction_sets():
    decoder = tiny_decoder(dec_layers=7)
    assert decoder.num_layers == 6
    out = decoder(*tiny_inputs())
    assert out["pred_logits"].shape == (B, Q, K + 1)
    assert out["pred_masks"].shape == (B, Q, *MASK_HW)
    assert len(out["aux_outputs"]) == 6
    preds = all_predictions(out)
    assert len(preds) == 7  # DEC_LAYERS prediction points
    for p in preds:
        assert p["pred_logits"].shape == (B, Q, K + 1) and p["pred_masks"].shape == (B, Q, *MASK_HW)


def test_layers_read_levels_round_robin():
    decoder = tiny_decoder(dec_layers=7)
    calls = capture_cross_attention(decoder)
    decoder(*tiny_inputs())
    assert [c["layer"] for c in calls] == list(range(6))
    lengths = [h * w for h, w in LEVEL_SIZES]
    assert [c["key"].shape[0] for c in calls] == [lengths[i % 3] for i in range(6)]


def test_attention_mask_comes_from_previous_prediction_at_next_level_size():
    decoder = tiny_decoder(dec_layers=7)
    calls = capture_cross_attention(decoder)
    preds = all_predictions(decoder(*tiny_inputs()))
    saw_masked = saw_open = False
    for i, call in enumerate(calls):
        resized = F.interpolate(
            preds[i]["pred_masks"], size=LEVEL_SIZES[i % 3], mode="bilinear", align_corners=False
        )
        hidden = resized.sigmoid() < 0.5  # (B, Q, h, w)
        # (B, Q, h*w) -> (B*heads, Q, h*w), index b * heads + head
        want = hidden.flatten(2).repeat_interleave(HEADS, dim=0)
        want[want.all(-1)] = False
        assert torch.equal(call["attn_mask"], want)
        saw_masked |= bool(want.any())
        saw_open |= bool((~want).any())
    assert saw_masked and saw_open


class FixedMaskEmbed(nn.Module):
    def __init__(self, embed):
        super().__init__()
        self.embed = embed  # (B, Q, MASK_DIM)

    def forward(self, x):
        return self.embed


def test_fully_masked_query_attends_everywhere():
    decoder = tiny_decoder(dec_layers=2)
    x, _ = tiny_inputs()
    mask_features = torch.rand(B, MASK_DIM, *MASK_HW) + 0.1  # positive everywhere
    embed = torch.randn(B, Q, MASK_DIM, generator=torch.Generator().manual_seed(3))
    embed[:, 0] = -1.0  # query 0: background everywhere -> its attention row is all masked
    decoder.mask_embed = FixedMaskEmbed(embed)
    calls = capture_cross_attention(decoder)
    decoder(x, mask_features)

    call = calls[0]
    raw = F.interpolate(
        torch.einsum("bqc,bchw->bqhw", embed, mask_features), size=LEVEL_SIZES[0], mode="bilinear"
    ).flatten(2)  # (B, Q, HW)
    assert bool((raw[:, 0] < 0).all())
    partial = ((raw < 0).any(-1) & ~(raw < 0).all(-1))[:, 1:]
    assert bool(partial.any()), "need a partly masked query to compare with"

    mha = decoder.transformer_cross_attention_layers[0].multihead_attn
    unmasked = mha(call["query"], call["key"], call["value"])[0]  # (Q, B, C)
    torch.testing.assert_close(call["output"][0], unmasked[0])  # query 0: same as no mask
    for b, q in partial.nonzero().tolist():
        assert not torch.allclose(call["output"][q + 1, b], unmasked[q + 1, b])
    # Without the rule the fully masked row would produce NaN.
    raw_mask = call["attn_mask"].clone()
    raw_mask[:, 0] = True
    assert torch.isnan(
        mha(call["query"], call["key"], call["value"], attn_mask=raw_mask)[0][0]
    ).all()


def test_unmask_fully_masked_rows():
    mask = torch.tensor([[[True, True], [True, False]]])
    assert torch.equal(
        unmask_fully_masked_rows(mask), torch.tensor([[[False, False], [True, False]]])
    )


@pytest.mark.parametrize("pre_norm", [False, True])
def test_backward_and_norm_variants(pre_norm):
    decoder = tiny_decoder(dec_layers=4, pre_norm=pre_norm)
    assert all(m.normalize_before == pre_norm for m in decoder.transformer_ffn_layers)
    out = decoder(*tiny_inputs())
    loss = sum(p["pred_logits"].sum() + p["pred_masks"].sum() for p in all_predictions(out))
    loss.backward()
    assert torch.isfinite(decoder.query_feat.weight.grad).all()
    assert decoder.query_feat.weight.grad.abs().sum() > 0


def expected_parameter_shapes(num_layers, hidden=C, ffn=32, mask_dim=MASK_DIM, in_proj=None):
    """Spec section 11 (decoder part), for a tiny decoder."""
    want = {}
    attn = {
        "in_proj_weight": (3 * hidden, hidden),
        "in_proj_bias": (3 * hidden,),
        "out_proj.weight": (hidden, hidden),
        "out_proj.bias": (hidden,),
    }
    norm = {"norm.weight": (hidden,), "norm.bias": (hidden,)}
    for i in range(num_layers):
        for group, attr in [("cross_attention", "multihead_attn"), ("self_attention", "self_attn")]:
            prefix = f"transformer_{group}_layers.{i}."
            want |= {prefix + f"{attr}.{k}": s for k, s in attn.items()}
            want |= {prefix + k: s for k, s in norm.items()}
        prefix = f"transformer_ffn_layers.{i}."
        want |= {prefix + "linear1.weight": (ffn, hidden), prefix + "linear1.bias": (ffn,)}
        want |= {prefix + "linear2.weight": (hidden, ffn), prefix + "linear2.bias": (hidden,)}
        want |= {prefix + k: s for k, s in norm.items()}
    want |= {"decoder_norm.weight": (hidden,), "decoder_norm.bias": (hidden,)}
    want |= {"query_feat.weight": (Q, hidden), "query_embed.weight": (Q, hidden)}
    want |= {"level_embed.weight": (3, hidden)}
    want |= {"class_embed.weight": (K + 1, hidden), "class_embed.bias": (K + 1,)}
    for j, (n_in, n_out) in enumerate([(hidden, hidden), (hidden, hidden), (hidden, mask_dim)]):
        want |= {
            f"mask_embed.layers.{j}.weight": (n_out, n_in),
            f"mask_embed.layers.{j}.bias": (n_out,),
        }
    if in_proj is not None:
        for lvl in range(3):
            want |= {
                f"input_proj.{lvl}.weight": (hidden, in_proj, 1, 1),
                f"input_proj.{lvl}.bias": (hidden,),
            }
    return want


def test_parameter_names_match_spec():
    decoder = tiny_decoder(dec_layers=4)
    got = {k: tuple(v.shape) for k, v in decoder.state_dict().items()}
    assert got == expected_parameter_shapes(3)


def test_input_projection_when_widths_differ():
    decoder = tiny_decoder(dec_layers=2, in_channels=24)
    got = {k: tuple(v.shape) for k, v in decoder.state_dict().items()}
    assert got == expected_parameter_shapes(1, in_proj=24)
    out = decoder(*tiny_inputs(in_channels=24))
    assert out["pred_masks"].shape == (B, Q, *MASK_HW)


def test_legacy_static_query_is_renamed_on_load():
    decoder = tiny_decoder(dec_layers=2)
    state = dict(decoder.state_dict())  # a plain dict: no version metadata
    state["static_query.weight"] = state.pop("query_feat.weight")
    fresh = tiny_decoder(dec_layers=2)
    result = fresh.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    torch.testing.assert_close(fresh.query_feat.weight, decoder.query_feat.weight)


def test_extra_queries_compose_without_changing_learned_queries():
    """The hooks MP-Former needs: extra queries, a self-attention mask, cross-mask overrides."""
    decoder = tiny_decoder(dec_layers=4)
    x, mask_features = tiny_inputs()
    plain = all_predictions(decoder(x, mask_features))

    extra = 3
    gen = torch.Generator().manual_seed(5)
    memory = decoder._prepare_memory(x)
    output, query_pos = decoder.initial_queries(B)  # (Q, B, C)
    output = torch.cat([output, torch.randn(extra, B, C, generator=gen)])
    query_pos = torch.cat([query_pos, torch.randn(extra, B, C, generator=gen)])
    self_attn_mask = torch.zeros(Q + extra, Q + extra, dtype=torch.bool)
    self_attn_mask[:Q, Q:] = True  # learned queries do not see the extra ones
    seen_layers = []

    def override(layer, attn_mask, size):
        seen_layers.append((layer, size))
        attn_mask = attn_mask.clone()
        attn_mask[:, Q:] = True
        attn_mask[:, Q:, 0] = False  # extra queries look at the first pixel only
        return attn_mask

    classes, masks = decoder.decode(
        output, query_pos, memory, mask_features, self_attn_mask, cross_attn_mask_fn=override
    )
    assert seen_layers == [(i, LEVEL_SIZES[i % 3]) for i in range(3)]
    assert len(classes) == len(masks) == 4
    for c, m, p in zip(classes, masks, plain):
        assert c.shape == (B, Q + extra, K + 1) and m.shape == (B, Q + extra, *MASK_HW)
        torch.testing.assert_close(c[:, :Q], p["pred_logits"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(m[:, :Q], p["pred_masks"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dec_layers,batch", [(1, B), (2, B), (7, B), (7, 1)])
def test_forward_last_matches_forward(dec_layers, batch):
    """Inference's last-point-only path (attention masks from resized mask features) gives the
    forward pass's last prediction, with the same cross-attention masks at every layer. For one
    image its masks are given once, (Q, HW), for all heads."""
    decoder = tiny_decoder(dec_layers=dec_layers).eval()
    x, mask_features = tiny_inputs(seed=3)
    x, mask_features = [f[:batch] for f in x], mask_features[:batch]
    calls = capture_cross_attention(decoder)
    with torch.no_grad():
        out = decoder(x, mask_features)
        full_masks = [c["attn_mask"] for c in calls]  # (batch*heads, Q, HW)
        calls.clear()
        logits, masks = decoder.forward_last(x, mask_features)
    assert len(calls) == len(full_masks)
    for got, expected in zip(calls, full_masks):
        if batch == 1:
            assert got["attn_mask"].dim() == 2
            expected = expected.unflatten(0, (batch, -1))
            assert torch.equal(expected, got["attn_mask"].expand_as(expected))
        else:
            assert torch.equal(got["attn_mask"], expected)
    torch.testing.assert_close(logits, out["pred_logits"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(masks, out["pred_masks"], atol=1e-5, rtol=1e-5)
