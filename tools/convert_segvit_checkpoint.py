"""Convert SegViT / ViT weights to this package's SegViT keys.

Sources (detected from the keys):

- a released SegViT checkpoint (mmsegmentation 0.x, zbwxp/SegVit): ``backbone.*`` (mmseg
  ``VisionTransformer`` / ``vit_shrink``) and ``decode_head.*`` (``ATMHead`` or ``TPNATMHead``);
- a ViT in mmseg's layout (the pre-trained ``vit_large_p16_384_20220308-d4efb41d.pth`` the
  reference starts from): ``patch_embed.projection``, ``layers.{i}.ln1`` ...;
- a timm ViT state dict (the jax ImageNet-21k weights as timm converts them):
  ``patch_embed.proj``, ``blocks.{i}.norm1`` ...

Every source key is either mapped or in the list of keys that have no counterpart and no effect
on SegViT's outputs (the class token and its position, the final norm and the classifier of the
ImageNet model, a duplicate loss buffer). Any other key is an error that names it.

Usage::

    python tools/convert_segvit_checkpoint.py SRC.pth OUT.pth [--img-size 640]

``--img-size`` resizes the position embedding to that crop's grid (bicubic), so that
Detectron2's checkpointer sees matching shapes; the model also resizes it when loading.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Callable

import torch
from torch.nn import functional as F

logger = logging.getLogger("convert_segvit_checkpoint")

Rule = tuple[str, str | Callable[[re.Match], str]]

# ViT block keys, mmseg layout -> ours (timm); the prefix is handled by the caller.
_MMSEG_BLOCK = {
    "ln1": "norm1",
    "attn.attn.in_proj_weight": "attn.qkv.weight",
    "attn.attn.in_proj_bias": "attn.qkv.bias",
    "attn.attn.out_proj": "attn.proj",
    "ln2": "norm2",
    "ffn.layers.0.0": "mlp.fc1",
    "ffn.layers.1": "mlp.fc2",
}
# ATM decoder-layer keys, reference -> ours.
_ATM_LAYER = {
    "self_attn": "self_attn",
    "multihead_attn": "cross_attn",
    "linear1": "linear1",
    "linear2": "linear2",
    "norm1": "norm1",
    "norm2": "norm2",
    "norm3": "norm3",
}

_BLOCK = r"\.(weight|bias)$"


def _mmseg_block(prefix: str) -> Rule:
    names = "|".join(re.escape(k) for k in _MMSEG_BLOCK)
    return (
        rf"^{prefix}layers\.(\d+)\.({names})(\.weight|\.bias)?$",
        lambda m: f"backbone.blocks.{m[1]}.{_MMSEG_BLOCK[m[2]]}{m[3] or ''}",
    )


def _atm_layers(src: str, dst: str) -> Rule:
    """``{src}{s}.layers.{j}.{reference name}.rest`` -> ``{dst}{s - 1}.layers.{j}.{ours}.rest``
    (``src`` ends with the 1-based stage number's prefix)."""
    names = "|".join(_ATM_LAYER)
    return (
        rf"^{src}(\d+)\.layers\.(\d+)\.({names})\.(.+)$",
        lambda m: f"{dst}{int(m[1]) - 1}.layers.{m[2]}.{_ATM_LAYER[m[3]]}.{m[4]}",
    )


def _stage(src: str, dst: str) -> Rule:
    """``{src}{s}.(weight|bias)`` -> ``{dst}.{s - 1}.(weight|bias)``."""
    return rf"^{src}(\d+){_BLOCK}", lambda m: f"{dst}.{int(m[1]) - 1}.{m[2]}"


# Keys with no counterpart that do not change SegViT's outputs.
DROPPED = [
    r"^(backbone\.)?cls_token$",  # dropped before the blocks (with_cls_token=False)
    r"^(backbone\.)?ln1\.(weight|bias)$",  # mmseg final norm, off (final_norm=False)
    r"^(norm|fc_norm|head|pre_logits\.fc)\.(weight|bias)$",  # timm final norm and classifier
    r"^decode_head\.atm\.loss_decode\.criterion\.empty_weight$",  # the outer head's duplicate
]

BACKBONE_MMSEG: list[Rule] = [
    (r"^(backbone\.)?patch_embed\.projection" + _BLOCK, r"backbone.patch_embed.\2"),
    (r"^(backbone\.)?pos_embed$", "backbone.pos_embed"),
    _mmseg_block("(?:backbone\\.)?"),
]
BACKBONE_TIMM: list[Rule] = [
    (r"^patch_embed\.proj" + _BLOCK, r"backbone.patch_embed.\1"),
    (r"^pos_embed$", "backbone.pos_embed"),
    (r"^blocks\.(\d+)\.(.+)$", r"backbone.blocks.\1.\2"),
]
ATM_HEAD: list[Rule] = [
    _stage(r"decode_head\.input_proj_", "sem_seg_head.input_proj"),
    _stage(r"decode_head\.proj_norm_", "sem_seg_head.proj_norm"),
    _atm_layers(r"decode_head\.decoder_", "sem_seg_head.decoders."),
    (r"^decode_head\.q\.weight$", "sem_seg_head.class_queries.weight"),
    (r"^decode_head\.class_embed" + _BLOCK, r"sem_seg_head.class_embed.\1"),
    (r"^decode_head\.loss_decode\.criterion\.empty_weight$", "criterion.empty_weight"),
]
SHRUNK_HEAD: list[Rule] = [
    _stage(r"decode_head\.input_proj_", "sem_seg_head.input_proj"),
    _stage(r"decode_head\.proj_norm_", "sem_seg_head.proj_norm"),
    (r"^decode_head\.decoder_(\d+)\.layers\.(\d+)\.(.+)$",
     lambda m: f"sem_seg_head.qu_decoders.{int(m[1]) - 1}.layers.{m[2]}.{m[3]}"),
    (r"^decode_head\.q\.weight$", "sem_seg_head.queries.weight"),
    _atm_layers(r"decode_head\.atm\.decoder_", "sem_seg_head.atm.decoders."),
    (r"^decode_head\.atm\.q\.weight$", "sem_seg_head.atm.class_queries.weight"),
    (r"^decode_head\.atm\.class_embed" + _BLOCK, r"sem_seg_head.atm.class_embed.\1"),
    (r"^decode_head\.loss_decode\.criterion\.empty_weight$", "criterion.empty_weight"),
]


def detect_format(state_dict: dict[str, torch.Tensor]) -> str:
    """"segvit", "segvit_shrunk", "mmseg_vit" or "timm_vit"."""
    keys = list(state_dict)
    if any(k.startswith("decode_head.atm.") for k in keys):
        return "segvit_shrunk"
    if any(k.startswith("decode_head.") for k in keys):
        return "segvit"
    if any(k.startswith(("layers.", "patch_embed.projection")) for k in keys):
        return "mmseg_vit"
    if any(k.startswith(("blocks.", "patch_embed.proj.")) for k in keys):
        return "timm_vit"
    raise ValueError(f"cannot tell the checkpoint's format from its keys, e.g. {keys[:5]}")


def _rules(fmt: str) -> list[Rule]:
    return {
        "segvit": BACKBONE_MMSEG + ATM_HEAD,
        "segvit_shrunk": BACKBONE_MMSEG + SHRUNK_HEAD,
        "mmseg_vit": BACKBONE_MMSEG,
        "timm_vit": BACKBONE_TIMM,
    }[fmt]


def _resize_pos_embed(pos_embed: torch.Tensor, grid: int | None) -> torch.Tensor:
    """(1, 1 + g*g, C) with the class token's position first -> (1, grid*grid, C)."""
    tokens = pos_embed[:, 1:]  # (1, g*g, C)
    side = int(round(tokens.shape[1] ** 0.5))
    if side * side != tokens.shape[1]:
        raise ValueError(f"position embedding {tuple(pos_embed.shape)} is not 1 + a square grid")
    if grid is None or grid == side:
        return tokens
    maps = tokens.reshape(1, side, side, -1).permute(0, 3, 1, 2)  # (1, C, g, g)
    maps = F.interpolate(maps.float(), size=(grid, grid), mode="bicubic", align_corners=False)
    return maps.flatten(2).transpose(1, 2).to(pos_embed.dtype)  # (1, grid*grid, C)


def convert_state_dict(
    state_dict: dict[str, torch.Tensor], *, grid: int | None = None
) -> dict[str, torch.Tensor]:
    """Source state dict -> our keys.

    Args:
        grid: resize the position embedding to grid x grid tokens (None: keep its grid).

    Raises:
        KeyError: naming every source key that is neither mapped nor known to be unused.
    """
    fmt = detect_format(state_dict)
    rules = [(re.compile(p), r) for p, r in _rules(fmt)]
    dropped = [re.compile(p) for p in DROPPED]
    out, unmapped = {}, []
    for key, value in state_dict.items():
        for pattern, repl in rules:
            if pattern.match(key):
                new = pattern.sub(repl, key)
                break
        else:
            if not any(p.match(key) for p in dropped):
                unmapped.append(key)
            continue
        if new in out:
            raise KeyError(f"two source keys map to '{new}' (the second is '{key}')")
        out[new] = _resize_pos_embed(value, grid) if new == "backbone.pos_embed" else value
    if unmapped:
        raise KeyError(f"{len(unmapped)} key(s) of the {fmt} checkpoint are not mapped: "
                       f"{', '.join(unmapped)}")
    logger.info("Converted %d of %d keys (%s)", len(out), len(state_dict), fmt)
    return out


def _unwrap(checkpoint: dict) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model"):
        if isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    return checkpoint


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="mmseg SegViT checkpoint, mmseg ViT or timm ViT (.pth)")
    parser.add_argument("output", help="converted checkpoint (.pth, Detectron2 format)")
    parser.add_argument("--img-size", type=int, default=None,
                        help="training crop size: resize the position embedding to its grid")
    parser.add_argument("--patch-size", type=int, default=16)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    checkpoint = torch.load(args.source, map_location="cpu", weights_only=True)
    grid = None if args.img_size is None else args.img_size // args.patch_size
    model = convert_state_dict(_unwrap(checkpoint), grid=grid)
    torch.save({"model": model, "__author__": "convert_segvit_checkpoint"}, args.output)
    logger.info("Wrote %s", args.output)


if __name__ == "__main__":
    main()
