"""Swin Transformer backbone (Liu et al., 2021) as a Detectron2 ``Backbone``.

Window self-attention with a learned relative position bias, alternating regular and shifted
windows (the shifted ones masked so that a window never mixes regions that the cyclic shift
brought together), patch merging between stages, stochastic depth, and zero padding of inputs
whose size is not a multiple of the patch or window size.

Parameter and buffer names follow the official implementation, so converted ImageNet weights
and official Mask2Former checkpoints load unchanged (``backbone.layers.{s}.blocks.{b}.attn.qkv``,
``backbone.norm{i}`` ...).

Tensors between blocks are channels-last: (B, H, W, C).
"""

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from detectron2.config import configurable
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, ShapeSpec
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import nn

from ..weight_init import init_linear_and_layernorm

__all__ = ["D2SwinTransformer", "relative_position_index", "shifted_window_mask"]

# Added to the attention logits of token pairs that the shifted-window mask separates.
_MASKED_LOGIT = -100.0


def relative_position_index(window_size: int) -> torch.Tensor:
    """Index into the bias table of every token pair of a window.

    Returns:
        (w*w, w*w) int64: ``(dy + w - 1) * (2w - 1) + (dx + w - 1)`` with ``(dy, dx)`` the offset
        of the query token from the key token (row-major token order within the window).
    """
    w = window_size
    grid = torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")
    coords = torch.stack(grid).flatten(1)  # (2, w*w): (y, x) of each token
    rel = coords[:, :, None] - coords[:, None, :]  # (2, w*w, w*w), query minus key
    rel = rel + (w - 1)  # shift to [0, 2w - 2]
    return rel[0] * (2 * w - 1) + rel[1]  # (w*w, w*w)


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """(B, H, W, C) with H, W multiples of the window -> (B * nW, w*w, C)."""
    b, h, w, c = x.shape
    ws = window_size
    x = x.view(b, h // ws, ws, w // ws, ws, c)  # (B, H/w, w, W/w, w, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)  # (B*nW, w*w, C)


def window_reverse(windows: torch.Tensor, window_size: int, h: int, w: int) -> torch.Tensor:
    """(B * nW, w*w, C) -> (B, H, W, C); inverse of ``window_partition``."""
    ws = window_size
    c = windows.shape[-1]
    x = windows.view(-1, h // ws, w // ws, ws, ws, c)  # (B, H/w, W/w, w, w, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)  # (B, H, W, C)


def shifted_window_mask(
    height: int, width: int, window_size: int, shift: int, device: torch.device | None = None
) -> torch.Tensor:
    """Additive attention mask of the shifted windows of a (padded) ``height x width`` map.

    After the cyclic shift by ``-shift``, the last window row/column holds tokens from the
    opposite border. Tokens are labelled by the region they came from; pairs with different
    labels get ``-100`` (effectively no attention), pairs with the same label 0.

    Returns:
        (nW, w*w, w*w) float32.
    """
    labels = torch.zeros(1, height, width, 1, device=device)  # (1, H, W, 1)
    bounds = (slice(0, -window_size), slice(-window_size, -shift), slice(-shift, None))
    region = 0
    for hs in bounds:
        for ws in bounds:
            labels[:, hs, ws, :] = region
            region += 1
    labels = window_partition(labels, window_size).squeeze(-1)  # (nW, w*w)
    differ = labels[:, None, :] != labels[:, :, None]  # (nW, w*w, w*w)
    return torch.zeros(differ.shape, device=device).masked_fill(differ, _MASKED_LOGIT)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a relative position bias."""

    def __init__(
        self,
        dim: int,
        window_size: int,
        num_heads: int,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.attn_drop = attn_drop
        # One learned bias per head and per relative offset in [-(w-1), w-1]^2.
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) ** 2, num_heads)
        )  # ((2w-1)^2, heads)
        # Persistent: official checkpoints carry it.
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B * nW, N, C) with N = w*w; mask: (nW, N, N) additive or None."""
        bw, n, c = x.shape
        heads = self.num_heads
        # (B*nW, N, 3C) -> (3, B*nW, heads, N, C/heads)
        qkv = self.qkv(x).reshape(bw, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n, n, heads).permute(2, 0, 1)  # (heads, N, N)
        if mask is None:
            attn_mask = bias.unsqueeze(0).expand(bw, -1, -1, -1)  # (B*nW, heads, N, N)
        else:
            nw = mask.shape[0]
            # (1, 1, heads, N, N) + (1, nW, 1, N, N) -> (B, nW, heads, N, N)
            attn_mask = bias[None, None] + mask[None, :, None].to(bias.dtype)
            attn_mask = attn_mask.expand(bw // nw, -1, -1, -1, -1).reshape(bw, heads, n, n)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask.to(q.dtype),
            dropout_p=self.attn_drop if self.training else 0.0,
            scale=self.scale,
        )  # (B*nW, heads, N, C/heads)
        out = out.transpose(1, 2).reshape(bw, n, c)  # (B*nW, N, C)
        return self.proj_drop(self.proj(out))


class SwinTransformerBlock(nn.Module):
    """Pre-norm block: (shifted) window attention, then MLP, each with a residual."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        shift_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        qk_scale: float | None,
        drop: float,
        attn_drop: float,
        drop_path: float,
    ):
        super().__init__()
        assert 0 <= shift_size < window_size, "shift_size must be in [0, window_size)"
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(
            dim, window_size, num_heads, qkv_bias, qk_scale, attn_drop, drop
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        """x: (B, H, W, C); attn_mask: (nW, w*w, w*w) for the padded map (shifted blocks only)."""
        _, h, w, _ = x.shape
        ws, shift = self.window_size, self.shift_size
        y = self.norm1(x)
        # Zero-pad bottom/right to multiples of the window (after the norm, as the original).
        pad_b, pad_r = (-h) % ws, (-w) % ws
        if pad_b or pad_r:
            y = F.pad(y, (0, 0, 0, pad_r, 0, pad_b))  # (B, Hp, Wp, C)
        hp, wp = h + pad_b, w + pad_r
        if shift > 0:
            y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
        else:
            attn_mask = None
        y = window_partition(y, ws)  # (B*nW, w*w, C)
        y = self.attn(y, mask=attn_mask)  # (B*nW, w*w, C)
        y = window_reverse(y, ws, hp, wp)  # (B, Hp, Wp, C)
        if shift > 0:
            y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
        y = y[:, :h, :w, :].contiguous()  # (B, H, W, C)
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """Concatenate each 2x2 neighbourhood (4C) and project to 2C: halves the resolution."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C); odd sizes are zero-padded."""
        _, h, w, _ = x.shape
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))  # (B, H', W', C), H' and W' even
        # Order (y, x): (0,0), (1,0), (0,1), (1,1), as the official weights expect.
        x = torch.cat(
            [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1
        )  # (B, H'/2, W'/2, 4C)
        return self.reduction(self.norm(x))  # (B, H'/2, W'/2, 2C)


class BasicLayer(nn.Module):
    """One stage: ``depth`` blocks alternating regular / shifted windows, then patch merging."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        qk_scale: float | None,
        drop: float,
        attn_drop: float,
        drop_path: list[float],
        downsample: bool,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                dim,
                num_heads,
                window_size,
                0 if i % 2 == 0 else self.shift_size,
                mlp_ratio,
                qkv_bias,
                qk_scale,
                drop,
                attn_drop,
                drop_path[i],
            )
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, W, C) -> (stage output (B, H, W, C), input of the next stage)."""
        _, h, w, _ = x.shape
        ws = self.window_size
        hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
        attn_mask = None
        if self.shift_size > 0:
            attn_mask = shifted_window_mask(hp, wp, ws, self.shift_size, x.device)  # (nW, N, N)
        for blk in self.blocks:
            if self.use_checkpoint and self.training:
                x = torch.utils.checkpoint.checkpoint(blk, x, attn_mask, use_reentrant=False)
            else:
                x = blk(x, attn_mask)
        out = x
        if self.downsample is not None:
            x = self.downsample(x)
        return out, x


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> linear embedding (a strided conv), optional LayerNorm."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, patch_norm: bool):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if patch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, ceil(H/p), ceil(W/p), C); right/bottom zero padding."""
        _, _, h, w = x.shape
        p = self.patch_size
        x = F.pad(x, (0, (-w) % p, 0, (-h) % p))  # (B, 3, Hp, Wp)
        x = self.proj(x).permute(0, 2, 3, 1)  # (B, Hp/p, Wp/p, C)
        return self.norm(x) if self.norm is not None else x


@BACKBONE_REGISTRY.register()
class D2SwinTransformer(Backbone):
    """Swin Transformer with outputs ``res2..res5`` (strides 4..32), each LayerNorm-ed."""

    @configurable
    def __init__(
        self,
        *,
        pretrain_img_size: int = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        embed_dim: int = 96,
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        ape: bool = False,
        patch_norm: bool = True,
        out_features: tuple[str, ...] = ("res2", "res3", "res4", "res5"),
        use_checkpoint: bool = False,
    ):
        """
        Args:
            pretrain_img_size: image size of the pre-training; sets the absolute position
                embedding's grid (only used when ``ape``).
            depths / num_heads: blocks and attention heads of each stage.
            drop_path_rate: stochastic depth, rising linearly from 0 to this over all blocks.
            ape: add an absolute position embedding after the patch embedding.
            out_features: subset of ``res2..res5`` to return.
        """
        super().__init__()
        num_stages = len(depths)
        self.num_features = [int(embed_dim * 2**i) for i in range(num_stages)]
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, patch_norm)
        if ape:
            grid = pretrain_img_size // patch_size
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, grid, grid))
            trunc_normal_(self.absolute_pos_embed, std=0.02)
        else:
            self.absolute_pos_embed = None
        self.pos_drop = nn.Dropout(p=drop_rate)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()  # one rate per block
        self.layers = nn.ModuleList(
            BasicLayer(
                dim=self.num_features[i],
                depth=depths[i],
                num_heads=num_heads[i],
                window_size=window_size,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                drop=drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=dpr[sum(depths[:i]) : sum(depths[: i + 1])],
                downsample=i < num_stages - 1,
                use_checkpoint=use_checkpoint,
            )
            for i in range(num_stages)
        )
        names = [f"res{i + 2}" for i in range(num_stages)]
        for name in out_features:
            assert name in names, f"Unknown Swin output {name}; choose from {names}"
        self._out_features = list(out_features)
        self._out_indices = [names.index(n) for n in out_features]
        self._out_feature_strides = {n: patch_size * 2**i for i, n in enumerate(names)}
        self._out_feature_channels = dict(zip(names, self.num_features))
        # One LayerNorm per stage, whether returned or not (official checkpoints hold all four).
        for i in range(num_stages):
            self.add_module(f"norm{i}", nn.LayerNorm(self.num_features[i]))
        # Swin's initialisation (the official Mask2Former copy defines it but never applies it,
        # which only matters without pretrained weights, i.e. when training from scratch).
        self.apply(init_linear_and_layernorm)

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        s = cfg.MODEL.SWIN
        return {
            "pretrain_img_size": s.PRETRAIN_IMG_SIZE,
            "patch_size": s.PATCH_SIZE,
            "in_chans": input_shape.channels,
            "embed_dim": s.EMBED_DIM,
            "depths": tuple(s.DEPTHS),
            "num_heads": tuple(s.NUM_HEADS),
            "window_size": s.WINDOW_SIZE,
            "mlp_ratio": s.MLP_RATIO,
            "qkv_bias": s.QKV_BIAS,
            "qk_scale": s.QK_SCALE,
            "drop_rate": s.DROP_RATE,
            "attn_drop_rate": s.ATTN_DROP_RATE,
            "drop_path_rate": s.DROP_PATH_RATE,
            "ape": s.APE,
            "patch_norm": s.PATCH_NORM,
            "out_features": tuple(s.OUT_FEATURES),
            "use_checkpoint": s.USE_CHECKPOINT,
        }

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (B, C, H, W) -> {"res{i}": (B, C_i, ceil(H / s_i), ceil(W / s_i))}."""
        assert x.dim() == 4, f"SwinTransformer takes (B, C, H, W) input, got {tuple(x.shape)}"
        x = self.patch_embed(x)  # (B, H/4, W/4, C)
        if self.absolute_pos_embed is not None:
            pos = F.interpolate(self.absolute_pos_embed, size=x.shape[1:3], mode="bicubic")
            x = x + pos.permute(0, 2, 3, 1)  # (1, C, H/4, W/4) -> (1, H/4, W/4, C)
        x = self.pos_drop(x)
        outs = {}
        for i, layer in enumerate(self.layers):
            out, x = layer(x)  # out: (B, H_i, W_i, C_i)
            if i in self._out_indices:
                out = getattr(self, f"norm{i}")(out)
                outs[f"res{i + 2}"] = out.permute(0, 3, 1, 2).contiguous()  # (B, C_i, H_i, W_i)
        return outs

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {
            n: ShapeSpec(
                channels=self._out_feature_channels[n], stride=self._out_feature_strides[n]
            )
            for n in self._out_features
        }

    @property
    def size_divisibility(self) -> int:
        return 32
