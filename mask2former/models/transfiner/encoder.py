"""Mask Transfiner's node encoder, sequence encoder and pixel decoder (spec sections 5 and 6).

Module names follow the reference (``encoder.layers.N.self_attn``, ``linear1``, ``norm1``,
``conv_fuse``, ``conv_r1``) so that its checkpoints load; ``conv_fuse`` and ``conv_r1`` are 1x1
convolutions there and stay so (they are applied to tokens as linear maps).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["TransfinerEncoder", "TransfinerEncoderLayer"]


class TransfinerEncoderLayer(nn.Module):
    """Post-norm transformer encoder layer; positions are added to queries and keys only."""

    def __init__(self, *, d_model: int, nhead: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(
        self, src: torch.Tensor, pos: torch.Tensor, padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """
        Args:
            src: (N, L, D) tokens; pos: (N, L, D) position codes.
            padding_mask: (N, L) bool, True at padding tokens (ignored as keys).
        """
        qk = src + pos  # (N, L, D)
        attended = self.self_attn(qk, qk, src, key_padding_mask=padding_mask, need_weights=False)[0]
        src = self.norm1(src + self.dropout1(attended))  # (N, L, D)
        ffn = self.linear2(self.dropout(F.relu(self.linear1(src))))  # (N, L, D)
        return self.norm2(src + self.dropout2(ffn))  # (N, L, D)


class TransfinerEncoder(nn.Module):
    """Node encoder (``conv_fuse``: [feature, coarse probability] -> token), the sequence encoder
    (``layers``) and the pixel decoder (``conv_r1``: per-token MLP to one logit)."""

    def __init__(
        self,
        *,
        in_channels: int,
        d_model: int,
        nhead: int,
        num_layers: int,
        dim_feedforward: int,
        dropout: float,
        node_context: bool = False,
    ):
        """
        Args:
            in_channels: RoI feature channels (a token's input is these + 1 coarse probability).
            d_model, nhead, num_layers, dim_feedforward, dropout: of the sequence encoder.
            node_context: add to each token's feature its 3x3 neighbourhood's features,
                compressed by a linear layer (``context_fc``), as the paper describes; the
                reference's code and weights have no such layer.
        """
        super().__init__()
        self.layers = nn.ModuleList(
            TransfinerEncoderLayer(
                d_model=d_model, nhead=nhead, dim_feedforward=dim_feedforward, dropout=dropout
            )
            for _ in range(num_layers)
        )
        self.conv_fuse = nn.Conv2d(in_channels + 1, d_model, 1, 1)
        self.conv_r1 = nn.Sequential(
            nn.Conv2d(d_model, d_model, 1, 1), nn.ReLU(), nn.Conv2d(d_model, 1, 1, 1)
        )
        self.context_fc = nn.Linear(9 * in_channels, in_channels) if node_context else None
        self.d_model = d_model
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def embed(self, feats: torch.Tensor, coarse_probs: torch.Tensor) -> torch.Tensor:
        """Tokens from node features (N, L, C) and coarse probabilities (N, L) -> (N, L, D)."""
        x = torch.cat([feats, coarse_probs.unsqueeze(-1)], dim=-1)  # (N, L, C + 1)
        return F.linear(x, self.conv_fuse.weight.flatten(1), self.conv_fuse.bias)  # (N, L, D)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-token foreground logits: (N, L, D) -> (N, L)."""
        first, _, last = self.conv_r1
        hidden = F.relu(F.linear(tokens, first.weight.flatten(1), first.bias))  # (N, L, D)
        return F.linear(hidden, last.weight.flatten(1), last.bias).squeeze(-1)  # (N, L)

    def forward(
        self,
        feats: torch.Tensor,
        coarse_probs: torch.Tensor,
        pos: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Foreground logits of every token.

        Args:
            feats: (N, L, C) node features; coarse_probs: (N, L); pos: (N, L, D).
            padding_mask: (N, L) bool, True at padding (its outputs are meaningless).

        Returns:
            (N, L) logits.
        """
        x = self.embed(feats, coarse_probs)  # (N, L, D)
        for layer in self.layers:
            x = layer(x, pos, padding_mask)
        return self.decode(x)  # (N, L)
