"""Plain ViT backbone of SegViT, with optional query-based down-sampling (QD, SegViT Shrunk).

The transformer blocks are timm's. The token grid (h, w) is carried explicitly, so inputs of any
size that the patch size (with QD: twice the patch size) divides work, square or not.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from functools import partial

import torch
from detectron2.config import configurable
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, ShapeSpec
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn
from torch.nn import functional as F

__all__ = ["D2PlainViT", "resize_pos_embed", "shrink_block_forward"]

logger = logging.getLogger(__name__)


def resize_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of a (1, gh*gw, C) position embedding of a square grid, or of a
    (1, C, gh, gw) map, to ``grid`` (h, w); returns (1, h*w, C)."""
    if pos_embed.dim() == 3:
        n = int(pos_embed.shape[1])
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"position embedding of {n} tokens is not a square grid")
        pos_embed = pos_embed.reshape(1, side, side, -1).permute(0, 3, 1, 2)  # (1, C, gh, gw)
    grid = (int(grid[0]), int(grid[1]))
    if tuple(pos_embed.shape[-2:]) != grid:
        pos_embed = F.interpolate(pos_embed, size=grid, mode="bicubic", align_corners=False)
    return pos_embed.flatten(2).transpose(1, 2)  # (1, h*w, C)


def shrink_block_forward(block: Block, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """A timm block run as SegViT's QD block: the queries (and the residual) are the tokens of
    every second row and column; keys and values are all tokens.

    Args:
        block: timm ``Block`` (its ``attn.qkv`` projects queries, keys and values).
        x: (B, h*w, C) tokens of the (h, w) grid; h and w must be even.

    Returns:
        (B, h/2 * w/2, C).
    """
    h, w = grid
    if h % 2 or w % 2:
        raise ValueError(
            f"QD (query-based down-sampling) halves the token grid, which must be even; got "
            f"{h}x{w} tokens. Pad inputs to a multiple of twice the patch size."
        )
    b, n, c = x.shape
    attn = block.attn
    heads = attn.num_heads
    down = x.reshape(b, h, w, c)[:, ::2, ::2].reshape(b, -1, c)  # (B, h/2*w/2, C)
    normed = block.norm1(x)  # (B, N, C)
    q_w, k_w, v_w = attn.qkv.weight.chunk(3)  # each (C, C)
    q_b, k_b, v_b = (None, None, None) if attn.qkv.bias is None else attn.qkv.bias.chunk(3)
    q = F.linear(block.norm1(down), q_w, q_b)  # (B, M, C)
    k = F.linear(normed, k_w, k_b)  # (B, N, C)
    v = F.linear(normed, v_w, v_b)  # (B, N, C)
    q, k, v = (t.reshape(b, t.shape[1], heads, c // heads).transpose(1, 2) for t in (q, k, v))
    drop = attn.attn_drop.p if block.training else 0.0
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)  # (B, heads, M, C/heads)
    out = out.transpose(1, 2).reshape(b, -1, c)  # (B, M, C)
    out = attn.proj_drop(attn.proj(attn.norm(out)))
    x = down + block.drop_path1(block.ls1(out))  # (B, M, C)
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


@BACKBONE_REGISTRY.register()
class D2PlainViT(Backbone):
    """Plain ViT (no final norm, no class token) returning the outputs of chosen blocks.

    Outputs "block{i}" for i in ``out_indices``: (B, C, H/16, W/16) maps (stride = patch size;
    blocks after a QD block: twice that). The learned position embedding (1, g*g, C) is resized
    bicubically to each input's grid; a checkpoint with a position embedding of another grid
    (e.g. ImageNet 384 weights) is resized when loaded.
    """

    @configurable
    def __init__(
        self,
        *,
        img_size: int,
        patch_size: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        out_indices: Sequence[int],
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        shrink_index: int = -1,
        ln_eps: float = 1e-6,
        in_chans: int = 3,
    ):
        """
        Args:
            img_size: training crop size; the position embedding has img_size/patch_size cells
                per side.
            patch_size: patch size (token stride).
            embed_dim, depth, num_heads, mlp_ratio: the transformer's C, blocks, heads, MLP
                ratio.
            out_indices: 0-based blocks whose outputs are returned.
            drop_path_rate: stochastic depth of the last block (linear from 0).
            shrink_index: block that does query-based down-sampling (QD); -1: none.
            ln_eps: LayerNorm epsilon.
            in_chans: input channels.
        """
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        bad = [i for i in out_indices if not 0 <= i < depth]
        if bad or not out_indices:
            raise ValueError(f"out_indices {list(out_indices)} must be in [0, {depth})")
        if shrink_index >= depth:
            raise ValueError(f"shrink_index {shrink_index} must be < depth {depth} (or -1)")
        self.patch_size = patch_size
        self.shrink_index = shrink_index
        self.out_indices = sorted(out_indices)
        grid = img_size // patch_size
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid, embed_dim))  # (1, g*g, C)
        trunc_normal_(self.pos_embed, std=0.02)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear
        norm = partial(nn.LayerNorm, eps=ln_eps)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, drop_path=r, norm_layer=norm)
            for r in rates
        )
        self._out_features = [f"block{i}" for i in self.out_indices]
        self._out_feature_channels = {k: embed_dim for k in self._out_features}
        self._out_feature_strides = {
            f"block{i}": patch_size * (2 if 0 <= shrink_index <= i else 1)
            for i in self.out_indices
        }

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec | None = None):
        vit = cfg.MODEL.VIT
        return {
            "img_size": vit.IMG_SIZE,
            "patch_size": vit.PATCH_SIZE,
            "embed_dim": vit.EMBED_DIM,
            "depth": vit.DEPTH,
            "num_heads": vit.NUM_HEADS,
            "out_indices": list(vit.OUT_INDICES),
            "mlp_ratio": vit.MLP_RATIO,
            "drop_path_rate": vit.DROP_PATH_RATE,
            "shrink_index": vit.SHRINK_INDEX,
            "ln_eps": vit.LN_EPS,
            "in_chans": 3 if input_shape is None else input_shape.channels,
        }

    @property
    def size_divisibility(self) -> int:
        return self.patch_size * (2 if self.shrink_index >= 0 else 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x (B, 3, H, W), H and W multiples of ``size_divisibility`` -> {"block{i}": (B, C, h_i,
        w_i)}."""
        if x.shape[-2] % self.patch_size or x.shape[-1] % self.patch_size:
            raise ValueError(
                f"input size {tuple(x.shape[-2:])} is not a multiple of the patch size "
                f"{self.patch_size}"
            )
        tokens = self.patch_embed(x)  # (B, C, h, w)
        grid = (int(tokens.shape[-2]), int(tokens.shape[-1]))
        tokens = tokens.flatten(2).transpose(1, 2)  # (B, h*w, C)
        tokens = tokens + resize_pos_embed(self.pos_embed, grid)  # (B, h*w, C)
        outputs = {}
        last = self.out_indices[-1]
        for i, block in enumerate(self.blocks[: last + 1]):
            if i == self.shrink_index:
                tokens = shrink_block_forward(block, tokens, grid)  # (B, h/2*w/2, C)
                grid = (grid[0] // 2, grid[1] // 2)
            else:
                tokens = block(tokens)  # (B, h*w, C)
            if i in self.out_indices:
                b, _, c = tokens.shape
                outputs[f"block{i}"] = tokens.transpose(1, 2).reshape(b, c, *grid)  # (B, C, h, w)
        return outputs

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {
            k: ShapeSpec(channels=self._out_feature_channels[k],
                         stride=self._out_feature_strides[k])
            for k in self._out_features
        }

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "pos_embed"
        if key in state_dict and state_dict[key].shape != self.pos_embed.shape:
            old = tuple(state_dict[key].shape)
            side = math.isqrt(int(self.pos_embed.shape[1]))
            state_dict[key] = resize_pos_embed(state_dict[key], (side, side))  # (1, g*g, C)
            logger.info("Resized %s from %s to %s", key, old, tuple(state_dict[key].shape))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
