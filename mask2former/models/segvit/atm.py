"""The attention-to-mask (ATM) decoder layer: class tokens attend to image tokens, and the
head-averaged pre-softmax attention logits are the class masks' logits."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["MaskAttention", "ATMLayer", "ATMDecoder"]


class MaskAttention(nn.Module):
    """Cross-attention that also returns its similarity logits.

    Args:
        dim: token width D.
        num_heads: heads; D must be a multiple of it.
        attn_drop: dropout on the attention weights.
    """

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not a multiple of the number of heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = nn.Dropout(attn_drop)

    def forward(
        self, query: torch.Tensor, memory: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            query: (B, K, D) class tokens.
            memory: (B, L, D) image tokens.

        Returns:
            (B, K, D) attention output and (B, K, L) head-mean of the pre-softmax logits
            ``q k^T / sqrt(D / heads)``.
        """
        b, n_q, d = query.shape
        n_k = memory.shape[1]
        heads = self.num_heads
        q = self.q(query).reshape(b, n_q, heads, d // heads).transpose(1, 2)  # (B, h, K, d)
        k = self.k(memory).reshape(b, n_k, heads, d // heads).transpose(1, 2)  # (B, h, L, d)
        v = self.v(memory).reshape(b, n_k, heads, d // heads).transpose(1, 2)  # (B, h, L, d)
        logits = torch.einsum("bhqd,bhkd->bhqk", q, k) * self.scale  # (B, h, K, L)
        attn = self.attn_drop(logits.softmax(dim=-1))  # (B, h, K, L)
        out = torch.einsum("bhqk,bhkd->bqhd", attn, v).reshape(b, n_q, d)  # (B, K, D)
        return self.proj(out), logits.mean(dim=1)  # (B, K, D), (B, K, L)


class ATMLayer(nn.Module):
    """Post-norm decoder layer: self-attention among the class tokens, ATM cross-attention to
    the image tokens, ReLU FFN; each with dropout, residual and LayerNorm.

    Args:
        dim: D.
        num_heads: heads of both attentions.
        dim_feedforward: FFN hidden width.
        dropout: dropout of the residual branches, the FFN and the cross-attention weights.
    """

    def __init__(self, dim: int, num_heads: int, dim_feedforward: int, dropout: float = 0.1):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.cross_attn = MaskAttention(dim, num_heads, attn_drop=dropout)
        self.linear1 = nn.Linear(dim, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, tokens: torch.Tensor, memory: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, K, D), memory (B, L, D) -> tokens (B, K, D), mask logits (B, K, L)."""
        attended = self.self_attn(tokens, tokens, tokens, need_weights=False)[0]  # (B, K, D)
        tokens = self.norm1(tokens + self.dropout(attended))
        attended, mask_logits = self.cross_attn(tokens, memory)  # (B, K, D), (B, K, L)
        tokens = self.norm2(tokens + self.dropout(attended))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(tokens))))  # (B, K, D)
        tokens = self.norm3(tokens + self.dropout(ffn))
        return tokens, mask_logits


class ATMDecoder(nn.Module):
    """A stack of :class:`ATMLayer`; returns every layer's tokens and mask logits."""

    def __init__(self, num_layers: int, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList(ATMLayer(**layer_kwargs) for _ in range(num_layers))

    def forward(
        self, tokens: torch.Tensor, memory: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """tokens (B, K, D), memory (B, L, D) -> per layer tokens (B, K, D) and mask logits
        (B, K, L)."""
        all_tokens, all_logits = [], []
        for layer in self.layers:
            tokens, logits = layer(tokens, memory)
            all_tokens.append(tokens)
            all_logits.append(logits)
        return all_tokens, all_logits
