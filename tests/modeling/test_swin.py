"""Swin Transformer backbone: shapes, relative positions, shifted-window masking, parity."""

import math
import re

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone

from mask2former.config import add_maskformer2_config
from mask2former.modeling.backbone.swin import (
    D2SwinTransformer,
    SwinTransformerBlock,
    relative_position_index,
    shifted_window_mask,
)

TINY = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7)


def tiny_swin(**overrides) -> D2SwinTransformer:
    torch.manual_seed(0)
    return D2SwinTransformer(**{**TINY, "drop_path_rate": 0.0, **overrides}).eval()


@pytest.mark.parametrize("height,width", [(70, 90), (64, 64), (33, 129)])
def test_output_shapes_strides_channels(height, width):
    model = tiny_swin()
    with torch.no_grad():
        out = model(torch.randn(2, 3, height, width))
    assert list(out) == ["res2", "res3", "res4", "res5"]
    shapes = model.output_shape()
    h, w = math.ceil(height / 4), math.ceil(width / 4)
    for i, name in enumerate(["res2", "res3", "res4", "res5"]):
        assert shapes[name].stride == 4 * 2**i
        assert shapes[name].channels == 16 * 2**i
        # Each stage halves the (padded) size: ceil, not floor.
        assert out[name].shape == (2, 16 * 2**i, h, w), name
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    assert model.size_divisibility == 32


def test_out_features_subset_keeps_all_norms():
    model = tiny_swin(out_features=("res3", "res5"))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert set(out) == {"res3", "res5"}
    assert set(model.output_shape()) == {"res3", "res5"}
    # Official checkpoints hold norm0..norm3 whatever the outputs.
    keys = model.state_dict().keys()
    assert {f"norm{i}.weight" for i in range(4)} <= set(keys)


def test_relative_position_index_window_2():
    # Tokens in row-major order (0,0), (0,1), (1,0), (1,1); entry [q, k] encodes the offset
    # (dy, dx) = q - k as (dy + 1) * 3 + (dx + 1).
    expected = torch.tensor(
        [
            [4, 3, 1, 0],
            [5, 4, 2, 1],
            [7, 6, 4, 3],
            [8, 7, 5, 4],
        ]
    )
    assert torch.equal(relative_position_index(2), expected)


def test_relative_position_index_window_7_range_and_buffer():
    idx = relative_position_index(7)
    assert idx.shape == (49, 49)
    assert idx.min() == 0 and idx.max() == 13 * 13 - 1
    assert torch.all(idx.diagonal() == 6 * 13 + 6)  # zero offset
    model = tiny_swin()
    attn = model.layers[1].blocks[0].attn
    assert torch.equal(attn.relative_position_index, idx)
    assert attn.relative_position_bias_table.shape == (13 * 13, 2)


def _direct_shifted_block(block: SwinTransformerBlock, x: torch.Tensor) -> torch.Tensor:
    """The block computed token by token on the equivalent non-cyclic shifted partition.

    A shift of ``s`` moves the window boundaries to ``s, s + w, s + 2w, ...``; a token attends
    exactly to the tokens of its (possibly partial) window, with the bias of their offset.
    """
    _, height, width, c = x.shape
    ws, s = block.window_size, block.shift_size
    attn = block.attn
    heads = attn.num_heads
    y = block.norm1(x)[0]  # (H, W, C)
    q, k, v = attn.qkv(y).view(height, width, 3, heads, c // heads).unbind(2)  # (H, W, h, d)
    table = attn.relative_position_bias_table
    out = torch.zeros(height, width, c)
    for py in range(height):
        for px in range(width):
            keys = [
                (ky, kx)
                for ky in range(height)
                for kx in range(width)
                if (ky + ws - s) // ws == (py + ws - s) // ws
                and (kx + ws - s) // ws == (px + ws - s) // ws
            ]
            heads_out = []
            for h in range(heads):
                logits = torch.stack(
                    [
                        attn.scale * (q[py, px, h] * k[ky, kx, h]).sum()
                        + table[(py - ky + ws - 1) * (2 * ws - 1) + (px - kx + ws - 1), h]
                        for ky, kx in keys
                    ]
                )
                weights = logits.softmax(0)
                values = torch.stack([v[ky, kx, h] for ky, kx in keys])  # (n, d)
                heads_out.append(weights @ values)
            out[py, px] = attn.proj(torch.cat(heads_out))
    x = x + out[None]
    return x + block.mlp(block.norm2(x))


def test_shifted_window_mask_blocks_cross_region_attention():
    torch.manual_seed(0)
    height, width, ws, shift = 4, 6, 2, 1
    block = SwinTransformerBlock(8, 2, ws, shift, 2.0, True, None, 0.0, 0.0, 0.0).eval()
    with torch.no_grad():
        block.attn.relative_position_bias_table.normal_()  # make the bias matter
        x = torch.randn(1, height, width, 8)
        mask = shifted_window_mask(height, width, ws, shift)
        assert mask.shape == ((height // ws) * (width // ws), ws * ws, ws * ws)
        got = block(x, mask)
        expected = _direct_shifted_block(block, x)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        # Without the mask, tokens wrapped around by the cyclic shift would mix.
        assert not torch.allclose(block(x, None), expected, atol=1e-3)


def test_shifted_window_mask_values():
    mask = shifted_window_mask(4, 4, 2, 1)  # (4 windows, 4, 4)
    assert set(mask.unique().tolist()) == {0.0, -100.0}
    # Window 0 (top-left) lies inside one region after the shift: nothing masked.
    assert torch.all(mask[0] == 0)
    # Window 3 (bottom-right) holds four tokens from four different regions.
    assert torch.equal(mask[3] == 0, torch.eye(4, dtype=torch.bool))


def test_matches_timm_swin_on_divisible_input():
    """Same weights in timm's independent Swin give the same stage outputs.

    Checks the layout official checkpoints rely on (patch-merging order, relative position
    index, qkv split). timm puts each patch merging at the start of the next stage and has one
    final norm instead of per-stage norms; the mapping below accounts for that.
    """
    timm_swin = pytest.importorskip("timm.models.swin_transformer")
    kw = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=2)
    ours = tiny_swin(**kw)
    ref = timm_swin.SwinTransformer(img_size=128, num_classes=0, drop_path_rate=0.0, **kw).eval()
    ours_sd = ours.state_dict()
    mapped = {}
    for key in ref.state_dict():
        m = re.match(r"layers\.(\d+)\.downsample\.(.*)", key)
        if m:
            mapped[key] = ours_sd[f"layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}"]
        elif key in ours_sd:
            mapped[key] = ours_sd[key]
    result = ref.load_state_dict(mapped, strict=False)
    assert set(result.missing_keys) <= {"norm.weight", "norm.bias"}
    assert not result.unexpected_keys
    stage_outputs = {}
    for i, layer in enumerate(ref.layers):
        layer.register_forward_hook(lambda m, a, o, i=i: stage_outputs.__setitem__(i, o))
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        ref.forward_features(x)
        out = ours(x)
        for i in range(4):
            expected = getattr(ours, f"norm{i}")(stage_outputs[i]).permute(0, 3, 1, 2)
            torch.testing.assert_close(out[f"res{i + 2}"], expected, atol=1e-5, rtol=1e-4)


def test_drop_path_rates_rise_linearly_and_train_mode_is_stochastic():
    model = tiny_swin(drop_path_rate=0.3)
    rates = [
        blk.drop_path.drop_prob if hasattr(blk.drop_path, "drop_prob") else 0.0
        for layer in model.layers
        for blk in layer.blocks
    ]
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.3, 8))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x)["res5"], model(x)["res5"])  # eval: deterministic
        model.train()
        assert not torch.equal(model(x)["res5"], model(x)["res5"])


def test_activation_checkpointing_gives_same_outputs_and_grads():
    x = torch.randn(1, 3, 64, 64)
    results = []
    for use_checkpoint in (False, True):
        model = tiny_swin(use_checkpoint=use_checkpoint).train()
        out = model(x)
        sum(o.square().mean() for o in out.values()).backward()
        grad = model.layers[2].blocks[1].attn.relative_position_bias_table.grad
        results.append((out["res4"].detach(), grad))
    torch.testing.assert_close(results[0][0], results[1][0])
    assert results[0][1] is not None and results[0][1].abs().sum() > 0
    torch.testing.assert_close(results[0][1], results[1][1])


def test_absolute_position_embedding_is_resized():
    model = tiny_swin(ape=True, pretrain_img_size=64)
    assert model.absolute_pos_embed.shape == (1, 16, 16, 16)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 70, 90))
    assert out["res2"].shape == (1, 16, 18, 23)


def test_built_from_config_registry():
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "D2SwinTransformer"
    cfg.MODEL.SWIN.EMBED_DIM = 32
    cfg.MODEL.SWIN.DEPTHS = [2, 2, 2, 2]
    cfg.MODEL.SWIN.NUM_HEADS = [1, 2, 4, 8]
    cfg.MODEL.SWIN.WINDOW_SIZE = 12
    backbone = build_backbone(cfg, ShapeSpec(channels=3))
    assert isinstance(backbone, D2SwinTransformer)
    assert {k: (v.channels, v.stride) for k, v in backbone.output_shape().items()} == {
        "res2": (32, 4),
        "res3": (64, 8),
        "res4": (128, 16),
        "res5": (256, 32),
    }
    assert backbone.layers[0].blocks[1].shift_size == 6
    assert backbone.layers[0].blocks[1].drop_path.drop_prob == pytest.approx(0.3 / 7)
