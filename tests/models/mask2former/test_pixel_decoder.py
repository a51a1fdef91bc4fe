"""Pixel decoders (FPN and deformable-attention) and the sine positional encoding, tiny sizes."""

import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec

from mask2former import add_maskformer2_config
from mask2former.layers import MSDeformAttn
from mask2former.modeling.position_encoding import PositionEmbeddingSine
from mask2former.models.mask2former import build_pixel_decoder

CHANNELS = {"res2": 8, "res3": 16, "res4": 24, "res5": 32}
INPUT_SHAPE = {k: ShapeSpec(channels=c, stride=2 ** int(k[-1])) for k, c in CHANNELS.items()}
IMAGE_HW = (64, 96)


def tiny_cfg(pixel_decoder: str, **head):
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    h = cfg.MODEL.SEM_SEG_HEAD
    h.PIXEL_DECODER_NAME = pixel_decoder
    h.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    h.CONVS_DIM = 32  # GroupNorm(32, .) needs a multiple of 32
    h.MASK_DIM = 16
    h.NORM = "GN"
    h.COMMON_STRIDE = 4
    h.TRANSFORMER_ENC_LAYERS = 2
    h.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = 4
    h.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS = 2
    cfg.MODEL.MASK_FORMER.DROPOUT = 0.0
    for key, value in head.items():
        setattr(h, key, value)
    return cfg


def tiny_features(batch=2, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn(
            batch, c, IMAGE_HW[0] // s.stride, IMAGE_HW[1] // s.stride, generator=gen
        ).to(dtype)
        for (k, c), s in zip(CHANNELS.items(), INPUT_SHAPE.values())
    }


def _hw(stride):
    return (IMAGE_HW[0] // stride, IMAGE_HW[1] // stride)


# ----------------------------------------------------------------------- positional encoding


def _expected_pe(pos, num_feats, channel, temperature=10000):
    dim_t = temperature ** (2 * (channel // 2) / num_feats)
    return math.sin(pos / dim_t) if channel % 2 == 0 else math.cos(pos / dim_t)


@pytest.mark.parametrize("normalize", [True, False])
def test_position_encoding_matches_formula(normalize):
    num_feats, height, width = 8, 3, 5
    pe = PositionEmbeddingSine(num_feats, normalize=normalize)
    out = pe(torch.zeros(2, 7, height, width))
    assert out.shape == (2, 2 * num_feats, height, width)
    assert out.dtype == torch.float32
    for i, j in [(0, 0), (1, 3), (2, 4)]:
        y, x = float(i + 1), float(j + 1)
        if normalize:
            y, x = y / (height + 1e-6) * 2 * math.pi, x / (width + 1e-6) * 2 * math.pi
        for c in range(num_feats):
            assert out[1, c, i, j].item() == pytest.approx(_expected_pe(y, num_feats, c), abs=1e-5)
            assert out[1, num_feats + c, i, j].item() == pytest.approx(
                _expected_pe(x, num_feats, c), abs=1e-5
            )


def test_position_encoding_mask_counts_valid_pixels_only():
    pe = PositionEmbeddingSine(4, normalize=True)
    mask = torch.zeros(1, 2, 5, dtype=torch.bool)
    mask[:, :, 3:] = True  # the last 2 columns are padding
    out = pe(torch.zeros(1, 1, 2, 5), mask)
    x_last_valid = 3 / (3 + 1e-6) * 2 * math.pi
    assert out[0, 4, 0, 2].item() == pytest.approx(math.sin(x_last_valid), abs=1e-5)


@pytest.mark.parametrize("normalize", [False, True])
def test_position_encoding_without_padding_is_the_masked_one_with_no_padding(normalize):
    """The unpadded path encodes rows and columns once; the masked path every pixel."""
    pe = PositionEmbeddingSine(6, normalize=normalize)
    x = torch.zeros(2, 3, 5, 7)
    fast, general = pe(x), pe(x, torch.zeros(2, 5, 7, dtype=torch.bool))
    assert torch.equal(fast, general) and fast.stride() == general.stride()


def test_position_encoding_has_no_parameters():
    assert not list(PositionEmbeddingSine(128, normalize=True).parameters())


# ----------------------------------------------------------------------- pixel decoders


@pytest.mark.parametrize("name", ["BasePixelDecoder", "MSDeformAttnPixelDecoder"])
def test_output_shapes(name):
    decoder = build_pixel_decoder(tiny_cfg(name), INPUT_SHAPE)
    mask_features, encoder_features, multi_scale = decoder.forward_features(tiny_features())
    assert mask_features.shape == (2, 16, *_hw(4))
    assert [tuple(f.shape) for f in multi_scale] == [(2, 32, *_hw(s)) for s in (32, 16, 8)]
    if name == "BasePixelDecoder":
        assert encoder_features is None
    else:
        assert encoder_features.shape == (2, 32, *_hw(32))


def test_fpn_parameter_names():
    decoder = build_pixel_decoder(tiny_cfg("BasePixelDecoder"), INPUT_SHAPE)
    prefixes = {k.rsplit(".", 1)[0] for k in decoder.state_dict()}
    assert prefixes == {
        "adapter_1",
        "adapter_1.norm",
        "adapter_2",
        "adapter_2.norm",
        "adapter_3",
        "adapter_3.norm",
        "layer_1",
        "layer_1.norm",
        "layer_2",
        "layer_2.norm",
        "layer_3",
        "layer_3.norm",
        "layer_4",
        "layer_4.norm",
        "mask_features",
    }
    assert decoder.mask_features.weight.shape == (16, 32, 3, 3)


def test_msdeformattn_parameter_names():
    decoder = build_pixel_decoder(tiny_cfg("MSDeformAttnPixelDecoder"), INPUT_SHAPE)
    state = decoder.state_dict()
    want = set()
    for lvl, res in enumerate(["res5", "res4", "res3"]):
        want |= {f"input_proj.{lvl}.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")}
        assert state[f"input_proj.{lvl}.0.weight"].shape == (32, CHANNELS[res], 1, 1)
    want.add("transformer.level_embed")
    for i in range(2):
        layer = f"transformer.encoder.layers.{i}."
        for sub in (
            "self_attn.sampling_offsets",
            "self_attn.attention_weights",
            "self_attn.value_proj",
            "self_attn.output_proj",
            "norm1",
            "linear1",
            "linear2",
            "norm2",
        ):
            want |= {layer + sub + ".weight", layer + sub + ".bias"}
    want |= {"adapter_1.weight", "adapter_1.norm.weight", "adapter_1.norm.bias"}
    want |= {"layer_1.weight", "layer_1.norm.weight", "layer_1.norm.bias"}
    want |= {"mask_features.weight", "mask_features.bias"}
    assert set(state) == want
    assert state["transformer.level_embed"].shape == (3, 32)
    assert state["transformer.encoder.layers.0.linear1.weight"].shape == (1024, 32)
    assert state["adapter_1.weight"].shape == (32, CHANNELS["res2"], 1, 1)
    assert state["mask_features.weight"].shape == (16, 32, 1, 1)


@pytest.mark.parametrize(
    "enc_features, common_stride, mask_stride",
    [(["res5"], 4, 4), (["res4", "res5"], 4, 4), (["res3", "res4", "res5"], 8, 8)],
)
def test_msdeformattn_levels_follow_config(enc_features, common_stride, mask_stride):
    cfg = tiny_cfg(
        "MSDeformAttnPixelDecoder",
        DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES=enc_features,
        COMMON_STRIDE=common_stride,
    )
    decoder = build_pixel_decoder(cfg, INPUT_SHAPE)
    min_stride = min(INPUT_SHAPE[f].stride for f in enc_features)
    assert decoder.num_fpn_levels == int(math.log2(min_stride) - math.log2(common_stride))
    assert len(decoder.input_proj) == len(enc_features)
    assert decoder.transformer.level_embed.shape[0] == len(enc_features)
    mask_features, _, multi_scale = decoder.forward_features(tiny_features())
    assert mask_features.shape[-2:] == _hw(mask_stride)
    assert [f.shape[-2:] for f in multi_scale] == [_hw(s) for s in (32, 16, 8)]


def test_msdeformattn_init_offsets():
    decoder = build_pixel_decoder(tiny_cfg("MSDeformAttnPixelDecoder"), INPUT_SHAPE)
    attns = [m for m in decoder.modules() if isinstance(m, MSDeformAttn)]
    assert len(attns) == 2
    heads, levels, points = 4, 3, 2
    want = torch.empty(heads, levels, points, 2)
    for k in range(heads):
        direction = (math.cos(2 * math.pi * k / heads), math.sin(2 * math.pi * k / heads))
        biggest = max(abs(direction[0]), abs(direction[1]))
        for p in range(points):
            want[k, :, p] = torch.tensor([c / biggest * (p + 1) for c in direction])
    for attn in attns:
        assert torch.count_nonzero(attn.sampling_offsets.weight) == 0
        torch.testing.assert_close(attn.sampling_offsets.bias.view(heads, levels, points, 2), want)
        assert torch.count_nonzero(attn.attention_weights.weight) == 0
        assert torch.count_nonzero(attn.attention_weights.bias) == 0
        assert torch.count_nonzero(attn.value_proj.bias) == 0
        assert torch.count_nonzero(attn.output_proj.bias) == 0


def test_msdeformattn_runs_in_fp32_with_autocast_off():
    decoder = build_pixel_decoder(tiny_cfg("MSDeformAttnPixelDecoder"), INPUT_SHAPE).eval()
    features = tiny_features(dtype=torch.bfloat16)
    with torch.no_grad():
        reference = decoder.forward_features({k: v.float() for k, v in features.items()})
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            mask_features, encoder_features, multi_scale = decoder.forward_features(features)
    got_all = [mask_features, encoder_features, *multi_scale]
    for got, want in zip(got_all, [reference[0], reference[1], *reference[2]]):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want)


def test_builder_rejects_head_without_forward_features():
    # Detectron2's own SemSegFPNHead is registered in the same registry but is no pixel decoder.
    with pytest.raises(ValueError, match="forward_features"):
        build_pixel_decoder(tiny_cfg("SemSegFPNHead"), INPUT_SHAPE)


def _set_token_block(decoder, block):
    layers = decoder.transformer.encoder.layers
    for layer in layers:
        layer.token_block = block
    return layers


def test_msdeformattn_encoder_in_token_blocks_matches_whole():
    """Inference runs the encoder's queries in blocks; the result is the whole-sequence one."""
    torch.manual_seed(0)
    decoder = build_pixel_decoder(tiny_cfg("MSDeformAttnPixelDecoder"), INPUT_SHAPE).eval()
    features = tiny_features()  # S = 96 + 24 + 6 = 126 encoder tokens
    with torch.no_grad():
        _set_token_block(decoder, 0)
        whole = decoder.forward_features(features)
        layers = _set_token_block(decoder, 10)  # 13 blocks, the last one of 6 tokens
        assert all(layer._runs_in_blocks(torch.zeros(2, 126, 32)) for layer in layers)
        blocked = decoder.forward_features(features)
    for b, w in zip([blocked[0], blocked[1], *blocked[2]], [whole[0], whole[1], *whole[2]]):
        torch.testing.assert_close(b, w, rtol=1e-5, atol=1e-5)


def test_msdeformattn_encoder_blocks_only_without_autograd():
    decoder = build_pixel_decoder(tiny_cfg("MSDeformAttnPixelDecoder"), INPUT_SHAPE)
    layer = _set_token_block(decoder, 10)[0]
    src = torch.zeros(2, 126, 32)
    assert not layer._runs_in_blocks(src)  # autograd on: the plain path keeps the graph
    with torch.no_grad():
        assert not layer._runs_in_blocks(src)  # training mode: the plain path has dropout
        layer.eval()
        assert layer._runs_in_blocks(src)
        assert not layer._runs_in_blocks(src[:, :10])  # one block: nothing to split
        layer.train()
    mask_features = decoder.forward_features(tiny_features())[0]
    mask_features.sum().backward()
    assert layer.linear1.weight.grad is not None
