"""Layers of the masked-attention transformer decoder (also used by FastInst's decoder).

Queries are sequence-first tensors (Q, B, C); attention masks are boolean with
``nn.MultiheadAttention`` semantics (True = not allowed). Parameter names are the official ones.
"""

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MLP", "CrossAttentionLayer", "FFNLayer", "SelfAttentionLayer"]


def _with_pos(tensor: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    return tensor if pos is None else tensor + pos


def _xavier_init(module: nn.Module) -> None:
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


class SelfAttentionLayer(nn.Module):
    """Residual self-attention over the queries, post-norm or pre-norm (``normalize_before``)."""

    def __init__(
        self, d_model: int, nhead: int, dropout: float = 0.0, normalize_before: bool = False
    ):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        _xavier_init(self)

    def forward(
        self,
        tgt: torch.Tensor,
        tgt_mask: torch.Tensor | None = None,
        tgt_key_padding_mask: torch.Tensor | None = None,
        query_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """tgt, query_pos: (Q, B, C); tgt_mask: (Q, Q) or (B*heads, Q, Q) bool. -> (Q, B, C)."""
        x = self.norm(tgt) if self.normalize_before else tgt
        q = k = _with_pos(x, query_pos)
        # need_weights=False: PyTorch's fused scaled-dot-product attention, which does not
        # return the (averaged) attention weights this model never reads.
        attn = self.self_attn(
            q,
            k,
            value=x,
            attn_mask=tgt_mask,
            key_padding_mask=tgt_key_padding_mask,
            need_weights=False,
        )[0]
        tgt = tgt + self.dropout(attn)
        return tgt if self.normalize_before else self.norm(tgt)


class CrossAttentionLayer(nn.Module):
    """Residual cross-attention from the queries to a memory, post-norm or pre-norm."""

    def __init__(
        self, d_model: int, nhead: int, dropout: float = 0.0, normalize_before: bool = False
    ):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        _xavier_init(self)

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor | None = None,
        memory_key_padding_mask: torch.Tensor | None = None,
        pos: torch.Tensor | None = None,
        query_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        tgt, query_pos: (Q, B, C); memory, pos: (HW, B, C); memory_mask: (B*heads, Q, HW) bool,
        or (Q, HW) shared by every head and image. Returns (Q, B, C).
        """
        x = self.norm(tgt) if self.normalize_before else tgt
        attn = self.multihead_attn(
            query=_with_pos(x, query_pos),
            key=_with_pos(memory, pos),
            value=memory,
            attn_mask=memory_mask,
            key_padding_mask=memory_key_padding_mask,
            need_weights=False,  # fused attention (see SelfAttentionLayer)
        )[0]
        tgt = tgt + self.dropout(attn)
        return tgt if self.normalize_before else self.norm(tgt)


class FFNLayer(nn.Module):
    """Residual two-layer ReLU feed-forward block, post-norm or pre-norm."""

    def __init__(
        self,
        d_model: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.0,
        normalize_before: bool = False,
    ):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.normalize_before = normalize_before
        _xavier_init(self)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        """(Q, B, C) -> (Q, B, C)."""
        x = self.norm(tgt) if self.normalize_before else tgt
        tgt = tgt + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(x)))))
        return tgt if self.normalize_before else self.norm(tgt)


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (not after the last)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        self.num_layers = num_layers
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < self.num_layers - 1:
                x = F.relu(x)
        return x
