"""Official FastInst YAMLs, loaded unchanged, build models whose state_dict has exactly the names
and shapes of the official checkpoints (so they load with 0 missing / 0 unexpected keys).

The expected tables are written here from the official model definition's naming rules
(junjiehe96/FastInst: Detectron2 ResNet or timm-style ResNet-vd, ``adapter_i`` / ``layer_i`` /
``ppm`` pixel decoder, ``FastInstDecoder`` module lists), not from our model code. Building
the full-size models is construction only, so it runs on the CPU.
"""

from pathlib import Path

import pytest
from detectron2.modeling import build_model

from mask2former.config import load_config

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "coco" / "instance-segmentation"
C, K, FFN, NA = 256, 80, 1024, 8  # hidden width, COCO classes, FFN width, auxiliary queries


def norm(prefix: str, ch: int, running: bool = True) -> dict:
    names = ["weight", "bias"] + (["running_mean", "running_var"] if running else [])
    return {f"{prefix}.{n}": (ch,) for n in names}


def linear(prefix: str, out_ch: int, in_ch: int) -> dict:
    return {f"{prefix}.weight": (out_ch, in_ch), f"{prefix}.bias": (out_ch,)}


def d2_resnet(blocks: list[int]) -> dict:
    """Detectron2 ResNet (FrozenBN): stem.conv1, resN.j.convK, shortcut."""
    keys = {"stem.conv1.weight": (64, 3, 7, 7), **norm("stem.conv1.norm", 64)}
    in_ch = 64
    for stage, n in zip(range(2, 6), blocks):
        mid = 64 * 2 ** (stage - 2)
        out = 4 * mid
        for j in range(n):
            p = f"res{stage}.{j}"
            keys[f"{p}.conv1.weight"] = (mid, in_ch if j == 0 else out, 1, 1)
            keys[f"{p}.conv2.weight"] = (mid, mid, 3, 3)
            keys[f"{p}.conv3.weight"] = (out, mid, 1, 1)
            for conv, ch in (("conv1", mid), ("conv2", mid), ("conv3", out)):
                keys.update(norm(f"{p}.{conv}.norm", ch))
            if j == 0:
                keys[f"{p}.shortcut.weight"] = (out, in_ch, 1, 1)
                keys.update(norm(f"{p}.shortcut.norm", out))
        in_ch = out
    return {f"backbone.{k}": v for k, v in keys.items()}


def vd_resnet(blocks: list[int], deform: list[bool]) -> dict:
    """timm-style ResNet-vd (FrozenBN): deep stem conv1.{0,3,6}, layerN.j, avg-pool shortcut
    downsample.{1,2}, deformable blocks with conv2_offset (18 channels)."""
    keys = {"conv1.0.weight": (32, 3, 3, 3), **norm("conv1.1", 32),
            "conv1.3.weight": (32, 32, 3, 3), **norm("conv1.4", 32),
            "conv1.6.weight": (64, 32, 3, 3), **norm("bn1", 64)}
    in_ch = 64
    for s, (n, dcn) in enumerate(zip(blocks, deform)):
        mid, out = 64 * 2**s, 256 * 2**s
        for j in range(n):
            p = f"layer{s + 1}.{j}"
            keys[f"{p}.conv1.weight"] = (mid, in_ch if j == 0 else out, 1, 1)
            keys[f"{p}.conv2.weight"] = (mid, mid, 3, 3)
            if dcn:
                keys[f"{p}.conv2_offset.weight"] = (18, mid, 3, 3)
                keys[f"{p}.conv2_offset.bias"] = (18,)
            keys[f"{p}.conv3.weight"] = (out, mid, 1, 1)
            for bn, ch in (("bn1", mid), ("bn2", mid), ("bn3", out)):
                keys.update(norm(f"{p}.{bn}", ch))
            if j == 0:
                keys[f"{p}.downsample.1.weight"] = (out, in_ch, 1, 1)
                keys.update(norm(f"{p}.downsample.2", out))
        in_ch = out
    return {f"backbone.{k}": v for k, v in keys.items()}


def ppm_fpn() -> dict:
    keys = {}
    for i, ch in enumerate((512, 1024, 2048), start=1):
        keys[f"adapter_{i}.weight"] = (C, ch, 1, 1)
        keys.update(norm(f"adapter_{i}.norm", C, running=False))  # GroupNorm
        keys[f"layer_{i}.weight"] = (C, C, 3, 3)
        keys.update(norm(f"layer_{i}.norm", C, running=False))
    for s in range(4):
        keys[f"ppm.stages.{s}.1.weight"] = (C // 4, C, 1, 1)
        keys[f"ppm.stages.{s}.1.bias"] = (C // 4,)
    keys["ppm.bottleneck.weight"] = (C, 2 * C, 1, 1)
    keys["ppm.bottleneck.bias"] = (C,)
    return {f"sem_seg_head.pixel_decoder.{k}": v for k, v in keys.items()}


def attention(prefix: str) -> dict:
    return {f"{prefix}.in_proj_weight": (3 * C, C), f"{prefix}.in_proj_bias": (3 * C,),
            **linear(f"{prefix}.out_proj", C, C)}


def decoder(layers: int) -> dict:
    keys = {"meta_pos_embed": (1, C, 10, 10),
            "empty_query_features.weight": (NA, C), "empty_query_pos_embed.weight": (NA, C),
            "query_proposal.conv_proposal_cls_logits.0.weight": (C, C, 3, 3),
            "query_proposal.conv_proposal_cls_logits.0.bias": (C,),
            "query_proposal.conv_proposal_cls_logits.2.weight": (K + 1, C, 1, 1),
            "query_proposal.conv_proposal_cls_logits.2.bias": (K + 1,)}
    for i in range(layers):
        for kind, attn in (("query_cross_attention", "multihead_attn"),
                           ("query_self_attention", "self_attn"),
                           ("mask_cross_attention", "multihead_attn")):
            p = f"transformer_{kind}_layers.{i}"
            keys.update(attention(f"{p}.{attn}"))
            keys.update(norm(f"{p}.norm", C, running=False))
        for kind in ("query_ffn", "mask_ffn"):
            p = f"transformer_{kind}_layers.{i}"
            keys.update(linear(f"{p}.linear1", FFN, C))
            keys.update(linear(f"{p}.linear2", C, FFN))
            keys.update(norm(f"{p}.norm", C, running=False))
    for i in range(layers + 1):
        keys.update(norm(f"decoder_query_norm_layers.{i}", C, running=False))
        for j, out in enumerate((C, C, K + 1)):
            keys.update(linear(f"class_embed_layers.{i}.layers.{j}", out, C))
        for j in range(3):
            keys.update(linear(f"mask_embed_layers.{i}.layers.{j}", C, C))
        keys.update(linear(f"mask_features_layers.{i}", C, C))
    return {f"sem_seg_head.predictor.{k}": v for k, v in keys.items()}


R50, R101 = [3, 4, 6, 3], [3, 4, 23, 3]
DCN = [False, False, True, True]
EXPECTED = {
    "fastinst_R50_ppm-fpn_x1_576.yaml": lambda: {**d2_resnet(R50), **decoder(1)},
    "fastinst_R50_ppm-fpn_x3_640.yaml": lambda: {**d2_resnet(R50), **decoder(3)},
    "fastinst_R101_ppm-fpn_x3_640.yaml": lambda: {**d2_resnet(R101), **decoder(3)},
    "fastinst_R50-vd-dcn_ppm-fpn_x1_576.yaml": lambda: {**vd_resnet(R50, DCN), **decoder(1)},
    "fastinst_R50-vd-dcn_ppm-fpn_x3_640.yaml": lambda: {**vd_resnet(R50, DCN), **decoder(3)},
}


@pytest.mark.parametrize("config", sorted(EXPECTED))
def test_state_dict_matches_the_official_names_and_shapes(config):
    cfg = load_config(str(CONFIGS / config), ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {**EXPECTED[config](), **ppm_fpn(), "criterion.empty_weight": (K + 1,)}
    assert sorted(set(got) - set(expected)) == []  # unexpected keys
    assert sorted(set(expected) - set(got)) == []  # missing keys
    wrong = {k: (got[k], v) for k, v in expected.items() if got[k] != v}
    assert wrong == {}


def test_every_official_config_is_in_the_table():
    shipped = {p.name for p in CONFIGS.glob("fastinst_*.yaml")}
    assert shipped == set(EXPECTED)
