"""The ATM layer and the heads (tiny sizes, CPU): mask logits by hand, stage sum, Shrunk QU."""

from pathlib import Path

import pytest
import torch
from detectron2.modeling import ShapeSpec

from mask2former.config import load_config
from mask2former.models.segvit.atm import ATMLayer, MaskAttention
from mask2former.models.segvit.head import ATMHead, ShrunkATMHead

B, C, D, K, HEADS = 2, 64, 32, 3, 4
TINY_CONFIG = str(Path(__file__).resolve().parents[3] / "configs" / "synthetic"
                  / "semantic-segmentation" / "segvit_tiny_synthetic.yaml")


def atm_head(**kwargs):
    torch.manual_seed(0)
    args = dict(in_features=["block5", "block3", "block1"], in_channels=C, num_classes=K,
                hidden_dim=D, num_heads=HEADS, layers_per_stage=2, dim_feedforward=64)
    args.update(kwargs)
    return ATMHead(**args).eval()


def features(grid=(4, 6)):
    torch.manual_seed(1)
    return {f"block{i}": torch.randn(B, C, *grid) for i in (1, 3, 5)}


def test_mask_logits_are_the_head_mean_of_scaled_qk():
    torch.manual_seed(0)
    attn = MaskAttention(D, HEADS).eval()
    query, memory = torch.randn(B, K, D), torch.randn(B, 24, D)
    out, logits = attn(query, memory)
    d = D // HEADS
    expected = torch.zeros(B, K, 24)
    attended = torch.zeros(B, K, D)
    for h in range(HEADS):
        sl = slice(h * d, (h + 1) * d)
        q = attn.q(query)[..., sl]  # (B, K, d)
        k = attn.k(memory)[..., sl]  # (B, L, d)
        s = q @ k.transpose(1, 2) / d**0.5  # (B, K, L)
        expected += s / HEADS
        weights = s.softmax(-1)
        torch.testing.assert_close(weights.sum(-1), torch.ones(B, K))  # rows sum to 1 over L
        attended[..., sl] = weights @ attn.v(memory)[..., sl]
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, attn.proj(attended), atol=1e-5, rtol=1e-5)


def test_atm_layer_is_deterministic_in_eval_and_random_in_training():
    torch.manual_seed(0)
    layer = ATMLayer(D, HEADS, 64, dropout=0.5)
    tokens, memory = torch.randn(B, K, D), torch.randn(B, 24, D)
    layer.eval()
    a, b = layer(tokens, memory), layer(tokens, memory)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    layer.train()
    assert not torch.equal(layer(tokens, memory)[0], layer(tokens, memory)[0])


def test_head_shapes_and_cumulative_stage_sum():
    head = atm_head()
    maps = features()
    out = head(maps)
    assert out["pred_logits"].shape == (B, K, K + 1)
    assert out["pred_masks"].shape == (B, K, 4, 6)
    aux = out["aux_outputs"]
    assert len(aux) == 2 and all(a["pred_logits"].shape == (B, K, K + 1) for a in aux)
    # Recompute the per-stage logits S_s, deepest map first, tokens handed on.
    tokens = head.class_queries.weight[None].expand(B, -1, -1)
    stage_logits = []
    for s, name in enumerate(["block5", "block3", "block1"]):
        memory = head.proj_norm[s](head.input_proj[s](maps[name].flatten(2).transpose(1, 2)))
        all_tokens, all_logits = head.decoders[s](tokens, memory)
        tokens = all_tokens[-1]
        stage_logits.append(all_logits[-1].reshape(B, K, 4, 6))
        logits = aux[s]["pred_logits"] if s < 2 else out["pred_logits"]
        torch.testing.assert_close(logits, head.class_embed(tokens))
    torch.testing.assert_close(aux[0]["pred_masks"], stage_logits[0])
    torch.testing.assert_close(aux[1]["pred_masks"] - aux[0]["pred_masks"], stage_logits[1],
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["pred_masks"], sum(stage_logits), atol=1e-5, rtol=1e-5)


def test_stage_order_is_deepest_first():
    head = atm_head()
    maps = features()
    swapped = dict(maps, block1=maps["block5"], block5=maps["block1"])
    assert not torch.allclose(head(maps)["pred_masks"], head(swapped)["pred_masks"])
    cfg = load_config(TINY_CONFIG)
    shapes = {f"block{i}": ShapeSpec(channels=C, stride=16) for i in (1, 3, 5, 11)}
    assert ATMHead.from_config(cfg, shapes)["in_features"] == ["block5", "block3", "block1"]


def shrunk_head(grid=(4, 6)):
    torch.manual_seed(0)
    return ShrunkATMHead(in_features=["block1", "block5"], in_channels=C, num_classes=K,
                         hidden_dim=D, num_heads=HEADS, layers_per_stage=3, dim_feedforward=64,
                         qu_grid=grid).eval()


def test_shrunk_head_qu_and_per_layer_outputs():
    head = shrunk_head()
    maps = {"block1": torch.randn(B, C, 4, 6), "block5": torch.randn(B, C, 2, 3)}
    qu = head.upsample_queries(maps)
    assert qu.shape == (B, D, 4, 6)
    out = head(maps)
    assert out["pred_logits"].shape == (B, K, K + 1) and out["pred_masks"].shape == (B, K, 4, 6)
    assert len(out["aux_outputs"]) == 2
    # Every layer stands alone: the masks are each layer's logits, not a running sum.
    tokens = head.atm.class_queries.weight[None].expand(B, -1, -1)
    _, layer_logits = head.atm.decoders[0](tokens, qu.flatten(2).transpose(1, 2))
    torch.testing.assert_close(out["aux_outputs"][1]["pred_masks"],
                               layer_logits[1].reshape(B, K, 4, 6))
    torch.testing.assert_close(out["pred_masks"], layer_logits[2].reshape(B, K, 4, 6))


def test_shrunk_head_on_another_grid_is_a_clear_error():
    head = shrunk_head()
    maps = {"block1": torch.randn(B, C, 6, 6), "block5": torch.randn(B, C, 3, 3)}
    with pytest.raises(ValueError, match="4x6 QU tokens are tied to the training crop"):
        head(maps)
