"""SegViT's heads: ``ATMHead`` (class tokens decoded stage by stage over ViT layers) and
``ShrunkATMHead`` (query-based up-sampling, QU, then one ATM stage), both registered in
``SEM_SEG_HEADS_REGISTRY``.

Both return the output dict of the shared criterion: "pred_logits" (B, K, K+1), "pred_masks"
(B, K, h, w) mask logits on the stride-16 token grid (not upsampled), and "aux_outputs", a list
of earlier predictions with the same two keys. Query k is class k.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from detectron2.config import configurable
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY, ShapeSpec
from torch import nn
from torch.nn import functional as F

from ...modeling.weight_init import init_linear_and_layernorm
from .atm import ATMDecoder

__all__ = ["ATMHead", "ShrunkATMHead"]


def _init_weights(module: nn.Module) -> None:
    """Linear: truncated normal (std 0.02), bias 0; LayerNorm: weight 1, bias 0 (in
    ``module.modules()`` order)."""
    for m in module.modules():
        init_linear_and_layernorm(m)


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h*w, C)."""
    return x.flatten(2).transpose(1, 2)


def _features_by_block(input_shape: dict[str, ShapeSpec]) -> list[str]:
    """Backbone feature names ordered by block index ("block7" before "block15")."""
    def index(name: str) -> int:
        digits = "".join(ch for ch in name if ch.isdigit())
        return int(digits) if digits else 0

    return sorted(input_shape, key=index)


@SEM_SEG_HEADS_REGISTRY.register()
class ATMHead(nn.Module):
    """Attention-to-mask head: K learnable class tokens cross-attend, stage by stage, to the
    backbone maps in ``in_features`` (deepest first); each stage is an :class:`ATMDecoder` and
    hands its tokens to the next.

    A stage's mask logits are its last layer's head-mean attention logits; the masks are summed
    over stages (M_s = M_{s-1} + S_s, each resized to the last stage's grid). One shared linear
    layer gives each stage's class logits. With ``per_layer_outputs`` (the Shrunk model's single
    stage) every layer is a prediction and masks are not summed.
    """

    @configurable
    def __init__(
        self,
        *,
        in_features: Sequence[str],
        in_channels: int,
        num_classes: int,
        hidden_dim: int,
        num_heads: int,
        layers_per_stage: int,
        dim_feedforward: int,
        dropout: float = 0.1,
        use_proj: bool = True,
        per_layer_outputs: bool = False,
    ):
        """
        Args:
            in_features: backbone maps of the stages, in stage order (deepest first).
            in_channels: their channels C.
            num_classes: K (= number of queries).
            hidden_dim: D.
            num_heads: attention heads.
            layers_per_stage: ATM layers per stage.
            dim_feedforward: FFN width of the ATM layers.
            dropout: dropout of the ATM layers.
            use_proj: Linear(C -> D) + LayerNorm per stage (False: C must equal D).
            per_layer_outputs: every layer is a prediction and masks are not summed.
        """
        super().__init__()
        if not use_proj and in_channels != hidden_dim:
            raise ValueError(f"use_proj=False needs in_channels ({in_channels}) == hidden_dim "
                             f"({hidden_dim})")
        self.in_features = list(in_features)
        self.num_classes = num_classes
        self.per_layer_outputs = per_layer_outputs
        stages = len(self.in_features)
        self.input_proj = nn.ModuleList(
            nn.Linear(in_channels, hidden_dim) if use_proj else nn.Identity() for _ in range(stages)
        )
        self.proj_norm = nn.ModuleList(
            nn.LayerNorm(hidden_dim) if use_proj else nn.Identity() for _ in range(stages)
        )
        self.decoders = nn.ModuleList(
            ATMDecoder(layers_per_stage, dim=hidden_dim, num_heads=num_heads,
                       dim_feedforward=dim_feedforward, dropout=dropout)
            for _ in range(stages)
        )
        self.class_queries = nn.Embedding(num_classes, hidden_dim)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        _init_weights(self)

    @classmethod
    def from_config(cls, cfg, input_shape: dict[str, ShapeSpec]):
        sv = cfg.MODEL.SEGVIT
        names = _features_by_block(input_shape)
        if sv.NUM_STAGES > len(names):
            raise ValueError(f"MODEL.SEGVIT.NUM_STAGES {sv.NUM_STAGES} > backbone outputs {names}")
        in_features = names[: sv.NUM_STAGES][::-1]  # deepest first
        return {
            "in_features": in_features,
            "in_channels": input_shape[in_features[0]].channels,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "hidden_dim": sv.HIDDEN_DIM,
            "num_heads": sv.NHEADS,
            "layers_per_stage": sv.LAYERS_PER_STAGE,
            "dim_feedforward": sv.DIM_FEEDFORWARD,
            "dropout": sv.DROPOUT,
            "use_proj": sv.USE_PROJ,
        }

    def forward(self, features: dict[str, torch.Tensor]) -> dict:
        """features: backbone maps (B, C, h, w) -> the output dict (module docstring)."""
        return self.decode([features[k] for k in self.in_features])

    def decode(self, maps: Sequence[torch.Tensor]) -> dict:
        """maps: one (B, C, h_s, w_s) map per stage, in stage order -> the output dict."""
        batch = maps[0].shape[0]
        tokens = self.class_queries.weight[None].expand(batch, -1, -1)  # (B, K, D)
        all_tokens, all_masks = [], []
        for x, proj, norm, decoder in zip(maps, self.input_proj, self.proj_norm, self.decoders):
            grid = tuple(x.shape[-2:])
            memory = norm(proj(_to_tokens(x)))  # (B, h*w, D)
            layer_tokens, layer_logits = decoder(tokens, memory)
            if not self.per_layer_outputs:
                layer_tokens, layer_logits = layer_tokens[-1:], layer_logits[-1:]
            all_tokens += layer_tokens
            all_masks += [s.reshape(batch, -1, *grid) for s in layer_logits]  # (B, K, h, w)
            tokens = all_tokens[-1]
        class_logits = self.class_embed(torch.stack(all_tokens))  # (P, B, K, K+1)
        if not self.per_layer_outputs:
            size = all_masks[-1].shape[-2:]
            summed, total = [], 0
            for m in all_masks:
                if m.shape[-2:] != size:
                    m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
                total = total + m  # (B, K, h, w)
                summed.append(total)
            all_masks = summed
        return {
            "pred_logits": class_logits[-1],
            "pred_masks": all_masks[-1],
            "aux_outputs": [
                {"pred_logits": c, "pred_masks": m}
                for c, m in zip(class_logits[:-1], all_masks[:-1])
            ],
        }


@SEM_SEG_HEADS_REGISTRY.register()
class ShrunkATMHead(nn.Module):
    """SegViT Shrunk head: query-based up-sampling (QU), then one ATM stage.

    QU: ``qu_grid`` learnable tokens (one per stride-16 cell of the training crop) pass through
    one post-norm transformer decoder per input map (shallow, stride 16, first; then the deep
    stride-32 map): self-attention among themselves and cross-attention to the projected map.
    They are reshaped into a (B, D, gh, gw) map on which an :class:`ATMHead` with one stage, no
    input projection and one prediction per layer runs. Inputs must have the training crop's
    grid (use sliding-window inference at the crop size).
    """

    @configurable
    def __init__(
        self,
        *,
        in_features: Sequence[str],
        in_channels: int,
        num_classes: int,
        hidden_dim: int,
        num_heads: int,
        layers_per_stage: int,
        dim_feedforward: int,
        qu_grid: tuple[int, int],
        dropout: float = 0.1,
    ):
        """
        Args:
            in_features: backbone maps of the QU stages, in order (stride 16 first).
            qu_grid: (gh, gw), the stride-16 grid of the training crop (gh * gw QU tokens).
            others: as :class:`ATMHead`.
        """
        super().__init__()
        self.in_features = list(in_features)
        self.num_classes = num_classes
        self.qu_grid = (int(qu_grid[0]), int(qu_grid[1]))
        self.queries = nn.Embedding(self.qu_grid[0] * self.qu_grid[1], hidden_dim)
        self.input_proj = nn.ModuleList(
            nn.Linear(in_channels, hidden_dim) for _ in self.in_features
        )
        self.proj_norm = nn.ModuleList(nn.LayerNorm(hidden_dim) for _ in self.in_features)
        self.qu_decoders = nn.ModuleList(
            nn.TransformerDecoder(
                nn.TransformerDecoderLayer(hidden_dim, num_heads, dim_feedforward, dropout,
                                           batch_first=True),
                layers_per_stage,
            )
            for _ in self.in_features
        )
        self.atm = ATMHead(
            in_features=["qu"], in_channels=hidden_dim, num_classes=num_classes,
            hidden_dim=hidden_dim, num_heads=num_heads, layers_per_stage=layers_per_stage,
            dim_feedforward=dim_feedforward, dropout=dropout, use_proj=False,
            per_layer_outputs=True,
        )
        _init_weights(self)

    @classmethod
    def from_config(cls, cfg, input_shape: dict[str, ShapeSpec]):
        sv, vit = cfg.MODEL.SEGVIT, cfg.MODEL.VIT
        names = _features_by_block(input_shape)
        if sv.NUM_STAGES > len(names):
            raise ValueError(f"MODEL.SEGVIT.NUM_STAGES {sv.NUM_STAGES} > backbone outputs {names}")
        in_features = names[: sv.NUM_STAGES]  # shallow first
        grid = vit.IMG_SIZE // vit.PATCH_SIZE
        return {
            "in_features": in_features,
            "in_channels": input_shape[in_features[0]].channels,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "hidden_dim": sv.HIDDEN_DIM,
            "num_heads": sv.NHEADS,
            "layers_per_stage": sv.LAYERS_PER_STAGE,
            "dim_feedforward": sv.DIM_FEEDFORWARD,
            "qu_grid": (grid, grid),
            "dropout": sv.DROPOUT,
        }

    def upsample_queries(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """QU: backbone maps -> (B, D, gh, gw)."""
        first = features[self.in_features[0]]
        if tuple(first.shape[-2:]) != self.qu_grid:
            raise ValueError(
                f"ShrunkATMHead: its {self.qu_grid[0]}x{self.qu_grid[1]} QU tokens are tied to the "
                f"training crop, but '{self.in_features[0]}' has a "
                f"{first.shape[-2]}x{first.shape[-1]} grid; run the model on inputs of the crop "
                f"size (MODEL.SEGVIT.TEST.MODE 'slide' with SLIDE_CROP = the crop)"
            )
        batch = first.shape[0]
        tokens = self.queries.weight[None].expand(batch, -1, -1)  # (B, gh*gw, D)
        for name, proj, norm, decoder in zip(
            self.in_features, self.input_proj, self.proj_norm, self.qu_decoders
        ):
            memory = norm(proj(_to_tokens(features[name])))  # (B, h*w, D)
            tokens = decoder(tokens, memory)  # (B, gh*gw, D)
        return tokens.transpose(1, 2).reshape(batch, -1, *self.qu_grid)  # (B, D, gh, gw)

    def forward(self, features: dict[str, torch.Tensor]) -> dict:
        """features: backbone maps -> the output dict (module docstring)."""
        return self.atm.decode([self.upsample_queries(features)])
