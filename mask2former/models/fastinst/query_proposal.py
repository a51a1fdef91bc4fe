"""Instance-activation-guided query selection (FastInst, section 3 of the spec).

An auxiliary classification head scores every pixel of the 1/16 feature map E4; the queries
are the E4 features of the top-scoring pixels, local maxima first.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["QueryProposal", "Proposals", "local_maximum", "selection_scores", "pixel_centres"]


def local_maximum(x: torch.Tensor, epsilon: float = 1e-6) -> torch.Tensor:
    """Pixels at least as large as their 8 neighbours (zero padding) and at least ``epsilon``.

    Args:
        x: (B, C, h, w); each channel is searched separately.

    Returns:
        (B, C, h, w) bool.
    """
    neighbours = F.max_pool2d(F.pad(x, (1, 1, 1, 1)), kernel_size=3, stride=1)  # (B, C, h, w)
    return (x >= neighbours) & (x >= epsilon)


def selection_scores(class_logits: torch.Tensor) -> torch.Tensor:
    """The score map the queries are selected from.

    Per pixel the class probabilities (softmax over K+1) keep only the most likely foreground
    class; local maxima of that map get +1, so that every local maximum outranks every other
    pixel. Score = max over foreground classes.

    Args:
        class_logits: (B, K+1, h, w), the last class being background.

    Returns:
        (B, h*w) scores, no gradient.
    """
    with torch.no_grad():
        probs = class_logits.float().softmax(dim=1)  # (B, K+1, h, w)
        best = probs[:, :-1].argmax(dim=1, keepdim=True)  # (B, 1, h, w)
        kept = torch.zeros_like(probs).scatter_(1, best, probs.gather(1, best))  # (B, K+1, h, w)
        scores = kept + local_maximum(kept).to(kept)  # (B, K+1, h, w)
        return scores[:, :-1].flatten(2).amax(dim=1)  # (B, h*w)


def pixel_centres(h: int, w: int, device: torch.device) -> torch.Tensor:
    """Normalised (x, y) centres ((j + 0.5) / w, (i + 0.5) / h) of an h x w grid, row-major:
    (h*w, 2)."""
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h  # (h,)
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w  # (w,)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # (h, w) each
    return torch.stack([grid_x, grid_y], dim=-1).flatten(0, 1)  # (h*w, 2)


class Proposals(NamedTuple):
    """Selected queries of a batch (N = min(num_queries, h*w))."""

    features: torch.Tensor  # (B, N, C) content: E4 features at the selected pixels
    pos_embeds: torch.Tensor  # (B, N, C) the resized position map at the same pixels
    locations: torch.Tensor  # (B, N, 2) normalised (x, y) pixel centres
    indices: torch.Tensor  # (B, N) int64 flat pixel indices into E4, best first
    class_logits: torch.Tensor  # (B, K+1, h, w) the auxiliary head's logits


class QueryProposal(nn.Module):
    """The auxiliary classification head on E4 and the top-k selection.

    Args:
        num_features: channels C of E4.
        num_queries: queries selected per image.
        num_classes: K.
    """

    def __init__(self, num_features: int, num_queries: int, num_classes: int):
        super().__init__()
        self.topk = num_queries
        self.num_classes = num_classes
        # Official parameter names: conv_proposal_cls_logits.0 (3x3) and .2 (1x1).
        self.conv_proposal_cls_logits = nn.Sequential(
            nn.Conv2d(num_features, num_features, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(num_features, num_classes + 1, kernel_size=1),
        )

    def forward(self, x: torch.Tensor, pos_embeds: torch.Tensor) -> Proposals:
        """
        Args:
            x: E4, (B, C, h, w).
            pos_embeds: (1 or B, C, h, w) position map at E4's size.

        Returns:
            :class:`Proposals`. When h*w < num_queries, all h*w pixels are selected.
        """
        class_logits = self.conv_proposal_cls_logits(x)  # (B, K+1, h, w)
        scores = selection_scores(class_logits)  # (B, h*w)
        k = min(self.topk, scores.shape[1])
        indices = scores.topk(k, dim=1).indices  # (B, N)
        b, c, h, w = x.shape
        gather_index = indices[:, :, None].expand(-1, -1, c)  # (B, N, C)
        features = x.flatten(2).transpose(1, 2).gather(1, gather_index)  # (B, N, C)
        pos = pos_embeds.expand(b, -1, -1, -1).flatten(2).transpose(1, 2)  # (B, h*w, C)
        pos = pos.gather(1, gather_index)  # (B, N, C)
        centres = pixel_centres(h, w, x.device)  # (h*w, 2)
        locations = centres[indices]  # (B, N, 2)
        return Proposals(features, pos, locations, indices, class_logits)
