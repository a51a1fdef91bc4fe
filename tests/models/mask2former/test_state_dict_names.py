"""The built model's state_dict has exactly the names and shapes of official checkpoints.

The expected tables are written here from the naming rules of the spec (section 11), not
from the model code: block counts [3, 4, 6, 3], 6 encoder layers, 9 decoder layers, etc.
Building a full-size model is only construction (no forward), so it runs on the CPU.
"""

from pathlib import Path

import pytest
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from mask2former.config import add_maskformer2_config

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
C = 256  # hidden / conv / mask width of the released configs


def build(config: str):
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    cfg.merge_from_file(str(CONFIGS / config))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    return build_model(cfg), cfg


def norm_keys(prefix: str, channels: int, frozen_bn: bool) -> dict:
    names = ["weight", "bias"] + (["running_mean", "running_var"] if frozen_bn else [])
    return {f"{prefix}.{n}": (channels,) for n in names}


def layer_norm(prefix: str, channels: int) -> dict:
    return {f"{prefix}.weight": (channels,), f"{prefix}.bias": (channels,)}


def linear(prefix: str, out_ch: int, in_ch: int, bias: bool = True) -> dict:
    keys = {f"{prefix}.weight": (out_ch, in_ch)}
    if bias:
        keys[f"{prefix}.bias"] = (out_ch,)
    return keys


def resnet_keys(blocks: list[int]) -> tuple[dict, list[int]]:
    """Detectron2 ResNet (bottleneck, FrozenBN, stride on the 3x3): ``backbone.`` names."""
    keys = {"stem.conv1.weight": (64, 3, 7, 7), **norm_keys("stem.conv1.norm", 64, True)}
    in_ch, bottleneck, out_channels = 64, 64, []
    for stage, n in zip(range(2, 6), blocks):
        out_ch = bottleneck * 4
        for j in range(n):
            p = f"res{stage}.{j}"
            block_in = in_ch if j == 0 else out_ch
            keys[f"{p}.conv1.weight"] = (bottleneck, block_in, 1, 1)
            keys[f"{p}.conv2.weight"] = (bottleneck, bottleneck, 3, 3)
            keys[f"{p}.conv3.weight"] = (out_ch, bottleneck, 1, 1)
            for conv, ch in (("conv1", bottleneck), ("conv2", bottleneck), ("conv3", out_ch)):
                keys.update(norm_keys(f"{p}.{conv}.norm", ch, True))
            if j == 0:
                keys[f"{p}.shortcut.weight"] = (out_ch, in_ch, 1, 1)
                keys.update(norm_keys(f"{p}.shortcut.norm", out_ch, True))
        out_channels.append(out_ch)
        in_ch, bottleneck = out_ch, bottleneck * 2
    return {f"backbone.{k}": v for k, v in keys.items()}, out_channels


def swin_keys(embed: int, depths: list[int], heads: list[int], window: int) -> tuple[dict, list]:
    keys = {"patch_embed.proj.weight": (embed, 3, 4, 4), "patch_embed.proj.bias": (embed,)}
    keys.update(layer_norm("patch_embed.norm", embed))
    channels = [embed * 2**i for i in range(4)]
    for s, (depth, ch, nh) in enumerate(zip(depths, channels, heads)):
        for b in range(depth):
            p = f"layers.{s}.blocks.{b}"
            keys.update(layer_norm(f"{p}.norm1", ch))
            keys[f"{p}.attn.relative_position_bias_table"] = ((2 * window - 1) ** 2, nh)
            keys[f"{p}.attn.relative_position_index"] = (window * window, window * window)
            keys.update(linear(f"{p}.attn.qkv", 3 * ch, ch))
            keys.update(linear(f"{p}.attn.proj", ch, ch))
            keys.update(layer_norm(f"{p}.norm2", ch))
            keys.update(linear(f"{p}.mlp.fc1", 4 * ch, ch))
            keys.update(linear(f"{p}.mlp.fc2", ch, 4 * ch))
        if s < 3:
            keys.update(linear(f"layers.{s}.downsample.reduction", 2 * ch, 4 * ch, bias=False))
            keys.update(layer_norm(f"layers.{s}.downsample.norm", 4 * ch))
        keys.update(layer_norm(f"norm{s}", ch))
    return {f"backbone.{k}": v for k, v in keys.items()}, channels


def pixel_decoder_keys(channels: list[int]) -> dict:
    """``MSDeformAttnPixelDecoder`` with encoder levels res3..res5 and one FPN level (res2)."""
    keys = {}
    # input_proj.0 <-> res5, 1 <-> res4, 2 <-> res3
    for level, in_ch in enumerate(reversed(channels[1:])):
        keys[f"input_proj.{level}.0.weight"] = (C, in_ch, 1, 1)
        keys[f"input_proj.{level}.0.bias"] = (C,)
        keys.update(layer_norm(f"input_proj.{level}.1", C))
    keys["transformer.level_embed"] = (3, C)
    heads, levels, points = 8, 3, 4
    for i in range(6):
        p = f"transformer.encoder.layers.{i}"
        keys.update(linear(f"{p}.self_attn.sampling_offsets", heads * levels * points * 2, C))
        keys.update(linear(f"{p}.self_attn.attention_weights", heads * levels * points, C))
        keys.update(linear(f"{p}.self_attn.value_proj", C, C))
        keys.update(linear(f"{p}.self_attn.output_proj", C, C))
        keys.update(layer_norm(f"{p}.norm1", C))
        keys.update(linear(f"{p}.linear1", 1024, C))
        keys.update(linear(f"{p}.linear2", C, 1024))
        keys.update(layer_norm(f"{p}.norm2", C))
    keys["adapter_1.weight"] = (C, channels[0], 1, 1)
    keys.update(layer_norm("adapter_1.norm", C))
    keys["layer_1.weight"] = (C, C, 3, 3)
    keys.update(layer_norm("layer_1.norm", C))
    keys["mask_features.weight"] = (C, C, 1, 1)
    keys["mask_features.bias"] = (C,)
    return {f"sem_seg_head.pixel_decoder.{k}": v for k, v in keys.items()}


def decoder_keys(num_queries: int, num_classes: int) -> dict:
    """``MultiScaleMaskedTransformerDecoder`` with 9 layers (DEC_LAYERS 10)."""
    keys = {}

    def mha(prefix):
        keys[f"{prefix}.in_proj_weight"] = (3 * C, C)
        keys[f"{prefix}.in_proj_bias"] = (3 * C,)
        keys.update(linear(f"{prefix}.out_proj", C, C))

    for i in range(9):
        mha(f"transformer_cross_attention_layers.{i}.multihead_attn")
        keys.update(layer_norm(f"transformer_cross_attention_layers.{i}.norm", C))
        mha(f"transformer_self_attention_layers.{i}.self_attn")
        keys.update(layer_norm(f"transformer_self_attention_layers.{i}.norm", C))
        keys.update(linear(f"transformer_ffn_layers.{i}.linear1", 2048, C))
        keys.update(linear(f"transformer_ffn_layers.{i}.linear2", C, 2048))
        keys.update(layer_norm(f"transformer_ffn_layers.{i}.norm", C))
    keys.update(layer_norm("decoder_norm", C))
    keys["query_feat.weight"] = (num_queries, C)
    keys["query_embed.weight"] = (num_queries, C)
    keys["level_embed.weight"] = (3, C)
    keys.update(linear("class_embed", num_classes + 1, C))
    for i in range(3):
        keys.update(linear(f"mask_embed.layers.{i}", C, C))
    return {f"sem_seg_head.predictor.{k}": v for k, v in keys.items()}


def assert_same_keys_and_shapes(model, expected: dict) -> None:
    actual = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(actual))
    unexpected = sorted(set(actual) - set(expected))
    assert not missing and not unexpected, (
        f"missing {len(missing)}: {missing[:20]}\nunexpected {len(unexpected)}: {unexpected[:20]}"
    )
    wrong = {k: (actual[k], v) for k, v in expected.items() if actual[k] != v}
    assert not wrong, f"(actual, expected) shapes differ: {wrong}"


@pytest.fixture(scope="module")
def r50_coco_panoptic():
    return build("coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml")


def test_r50_coco_panoptic_names_and_shapes(r50_coco_panoptic):
    model, _ = r50_coco_panoptic
    backbone, channels = resnet_keys([3, 4, 6, 3])
    assert channels == [256, 512, 1024, 2048]
    expected = {
        **backbone,
        **pixel_decoder_keys(channels),
        **decoder_keys(num_queries=100, num_classes=133),
        "criterion.empty_weight": (134,),
    }
    assert_same_keys_and_shapes(model, expected)


def test_pixel_normalisation_is_not_saved_and_empty_weight_is(r50_coco_panoptic):
    model, cfg = r50_coco_panoptic
    keys = model.state_dict().keys()
    assert "pixel_mean" not in keys and "pixel_std" not in keys
    assert "criterion.empty_weight" in keys
    weight = model.state_dict()["criterion.empty_weight"]
    assert weight[-1].item() == pytest.approx(cfg.MODEL.MASK_FORMER.NO_OBJECT_WEIGHT)
    assert weight[:-1].eq(1).all()
    # Still buffers of the model (device, normalisation), just not persistent.
    buffers = dict(model.named_buffers())
    assert "pixel_mean" in buffers and "pixel_std" in buffers


def test_swin_tiny_coco_instance_names_and_shapes():
    model, _ = build("coco/instance-segmentation/swin/maskformer2_swin_tiny_bs16_50ep.yaml")
    backbone, channels = swin_keys(96, [2, 2, 6, 2], [3, 6, 12, 24], window=7)
    expected = {
        **backbone,
        **pixel_decoder_keys(channels),
        **decoder_keys(num_queries=100, num_classes=80),
        "criterion.empty_weight": (81,),
    }
    assert_same_keys_and_shapes(model, expected)
