"""tools/convert_segvit_checkpoint.py on state dicts with the official key names and shapes.

The tables are written from the reference source (zbwxp/SegVit: mmseg 0.x ``VisionTransformer``
and ``vit_shrink``, ``decode_heads/atm_head.py``, ``tpn_atm_head.py``, ``atm_single_head.py``,
``losses/atm_loss.py``; timm's ``VisionTransformer``), at the released ViT-L/16 sizes. Tensors
live on the meta device: only names and shapes matter, except for the position embedding.
"""

import importlib.util
from pathlib import Path

import pytest
import torch

from mask2former.config import load_config
from mask2former.models.segvit.segvit_model import SegViT

ROOT = Path(__file__).resolve().parents[3]
spec = importlib.util.spec_from_file_location(
    "convert_segvit_checkpoint", ROOT / "tools" / "convert_segvit_checkpoint.py")
convert = importlib.util.module_from_spec(spec)
spec.loader.exec_module(convert)

C, DEPTH, D, K, GRID = 1024, 24, 512, 150, 40  # ViT-L/16, ADE20K, 640 crops

# mmseg TransformerEncoderLayer (backbone.layers.{i}.*).
MMSEG_VIT_LAYER = {
    "ln1.weight": (C,), "ln1.bias": (C,),
    "attn.attn.in_proj_weight": (3 * C, C), "attn.attn.in_proj_bias": (3 * C,),
    "attn.attn.out_proj.weight": (C, C), "attn.attn.out_proj.bias": (C,),
    "ln2.weight": (C,), "ln2.bias": (C,),
    "ffn.layers.0.0.weight": (4 * C, C), "ffn.layers.0.0.bias": (4 * C,),
    "ffn.layers.1.weight": (C, 4 * C), "ffn.layers.1.bias": (C,),
}
# timm Block (blocks.{i}.*).
TIMM_BLOCK = {
    "norm1.weight": (C,), "norm1.bias": (C,), "attn.qkv.weight": (3 * C, C),
    "attn.qkv.bias": (3 * C,), "attn.proj.weight": (C, C), "attn.proj.bias": (C,),
    "norm2.weight": (C,), "norm2.bias": (C,), "mlp.fc1.weight": (4 * C, C),
    "mlp.fc1.bias": (4 * C,), "mlp.fc2.weight": (C, 4 * C), "mlp.fc2.bias": (C,),
}
# Shared by TPN_DecoderLayer (ATM) and nn.TransformerDecoderLayer (QU).
DECODER_LAYER_COMMON = {
    "self_attn.in_proj_weight": (3 * D, D), "self_attn.in_proj_bias": (3 * D,),
    "self_attn.out_proj.weight": (D, D), "self_attn.out_proj.bias": (D,),
    "linear1.weight": (4 * D, D), "linear1.bias": (4 * D,),
    "linear2.weight": (D, 4 * D), "linear2.bias": (D,),
    **{f"norm{i}.{p}": (D,) for i in (1, 2, 3) for p in ("weight", "bias")},
}
ATM_LAYER = {**DECODER_LAYER_COMMON,
             **{f"multihead_attn.{n}.{p}": (D, D) if p == "weight" else (D,)
                for n in ("q", "k", "v", "proj") for p in ("weight", "bias")}}
QU_LAYER = {**DECODER_LAYER_COMMON,
            "multihead_attn.in_proj_weight": (3 * D, D), "multihead_attn.in_proj_bias": (3 * D,),
            "multihead_attn.out_proj.weight": (D, D), "multihead_attn.out_proj.bias": (D,)}


def mmseg_backbone(prefix="backbone."):
    table = {"cls_token": (1, 1, C), "pos_embed": (1, 1 + GRID * GRID, C),
             "patch_embed.projection.weight": (C, 3, 16, 16), "patch_embed.projection.bias": (C,)}
    table.update({f"layers.{i}.{k}": s for i in range(DEPTH) for k, s in MMSEG_VIT_LAYER.items()})
    return {prefix + k: s for k, s in table.items()}


def atm_head_table(prefix, stages, use_proj=True):
    table = {}
    for s in range(1, stages + 1):
        if use_proj:
            table.update({f"input_proj_{s}.weight": (D, C), f"input_proj_{s}.bias": (D,),
                          f"proj_norm_{s}.weight": (D,), f"proj_norm_{s}.bias": (D,)})
        table.update({f"decoder_{s}.layers.{j}.{k}": v for j in range(3)
                      for k, v in ATM_LAYER.items()})
    table.update({"q.weight": (K, D), "class_embed.weight": (K + 1, D),
                  "class_embed.bias": (K + 1,), "loss_decode.criterion.empty_weight": (K + 1,)})
    return {prefix + k: v for k, v in table.items()}


def segvit_table():
    return {**mmseg_backbone(), **atm_head_table("decode_head.", 3)}


def shrunk_table():
    table = mmseg_backbone()
    head = {"q.weight": (GRID * GRID, D), "loss_decode.criterion.empty_weight": (K + 1,)}
    for s in (1, 2):
        head.update({f"input_proj_{s}.weight": (D, C), f"input_proj_{s}.bias": (D,),
                     f"proj_norm_{s}.weight": (D,), f"proj_norm_{s}.bias": (D,)})
        head.update({f"decoder_{s}.layers.{j}.{k}": v for j in range(3)
                     for k, v in QU_LAYER.items()})
    table.update({"decode_head." + k: v for k, v in head.items()})
    table.update(atm_head_table("decode_head.atm.", 1, use_proj=False))
    return table


def as_state_dict(table):
    return {k: torch.empty(v, device="meta") for k, v in table.items()}


def our_model(*opts):
    cfg = load_config(str(ROOT / "configs" / "ade20k" / "semantic-segmentation" / "segvit" /
                          opts[0]), ["MODEL.WEIGHTS", ""])
    with torch.device("meta"):
        model = SegViT(**SegViT.from_config(cfg))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check(converted, expected):
    shapes = {k: tuple(v.shape) for k, v in converted.items()}
    assert set(shapes) == set(expected), (set(shapes) ^ set(expected))
    wrong = {k: (shapes[k], expected[k]) for k in shapes if shapes[k] != expected[k]}
    assert not wrong


def test_released_segvit_checkpoint_maps_every_key():
    state = as_state_dict(segvit_table())
    state["backbone.pos_embed"] = torch.randn(1, 1 + GRID * GRID, C)
    converted = convert.convert_state_dict(state)
    check(converted, our_model("segvit_vit-l_640_160k.yaml"))
    torch.testing.assert_close(converted["backbone.pos_embed"], state["backbone.pos_embed"][:, 1:])
    assert converted["sem_seg_head.decoders.0.layers.2.cross_attn.q.weight"].shape == (D, D)


def test_released_shrunk_checkpoint_maps_every_key():
    state = as_state_dict(shrunk_table())
    state["backbone.pos_embed"] = torch.randn(1, 1 + GRID * GRID, C)
    check(convert.convert_state_dict(state), our_model("segvit_vit-l_shrunk_640_160k.yaml"))


@pytest.mark.parametrize("fmt", ["timm", "mmseg"])
def test_pretrained_vit_maps_to_the_backbone_with_a_resized_position_embedding(fmt):
    if fmt == "timm":
        table = {"cls_token": (1, 1, C), "patch_embed.proj.weight": (C, 3, 16, 16),
                 "patch_embed.proj.bias": (C,), "norm.weight": (C,), "norm.bias": (C,),
                 "head.weight": (21843, C), "head.bias": (21843,)}
        table.update({f"blocks.{i}.{k}": s for i in range(DEPTH) for k, s in TIMM_BLOCK.items()})
    else:
        table = mmseg_backbone(prefix="")
        table.update({"ln1.weight": (C,), "ln1.bias": (C,)})  # final norm
        del table["pos_embed"]
    state = as_state_dict(table)
    state["pos_embed"] = torch.randn(1, 1 + 24 * 24, C)  # ImageNet 384: 24x24 grid
    converted = convert.convert_state_dict(state, grid=GRID)
    expected = {k: v for k, v in our_model("segvit_vit-l_640_160k.yaml").items()
                if k.startswith("backbone.")}
    check(converted, expected)
    assert convert.detect_format(state) == f"{fmt}_vit"


def test_an_unmapped_key_is_an_error_that_names_it():
    state = as_state_dict(segvit_table())
    state["decode_head.conv_seg.weight"] = torch.empty(K, D, 1, 1, device="meta")
    with pytest.raises(KeyError, match="decode_head.conv_seg.weight"):
        convert.convert_state_dict(state)
