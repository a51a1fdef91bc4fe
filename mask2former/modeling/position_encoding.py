"""Sine positional encoding of 2-D feature maps (DETR), shared by pixel and transformer decoders.

Channels are ``[y (num_pos_feats) ; x (num_pos_feats)]``; within each half, channel ``2j``
holds ``sin(p / T^(2j/F))`` and channel ``2j+1`` holds ``cos(p / T^(2j/F))`` (F =
num_pos_feats, T = temperature), where ``p`` is the 1-based row (column) index of the unmasked
pixel, optionally normalised to ``p / count * scale``.
"""

import math

import torch
from torch import nn

_EPS = 1e-6  # added to the valid-pixel count before normalising


class PositionEmbeddingSine(nn.Module):
    """Parameter-free sine positional encoding.

    Args:
        num_pos_feats: channels per axis F (the output has 2F channels).
        temperature: base T of the frequencies.
        normalize: divide positions by the number of valid pixels along the axis, then multiply
            by ``scale``.
        scale: range of normalised positions (default 2*pi); requires ``normalize``.
    """

    def __init__(
        self,
        num_pos_feats: int = 64,
        temperature: float = 10000,
        normalize: bool = False,
        scale: float | None = None,
    ):
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("normalize should be True if scale is passed")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            x: (B, C, H, W); only its batch size, spatial size and device are used.
            mask: (B, H, W) bool, True at padded pixels (excluded from the count), or None.

        Returns:
            (B, 2F, H, W) float32.
        """
        if mask is None:
            return self._unpadded(x.size(0), x.size(2), x.size(3), x.device)
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)  # (B, H, W), 1-based row index
        x_embed = not_mask.cumsum(2, dtype=torch.float32)  # (B, H, W), 1-based column index
        if self.normalize:
            y_embed = y_embed / (y_embed[:, -1:, :] + _EPS) * self.scale
            x_embed = x_embed / (x_embed[:, :, -1:] + _EPS) * self.scale
        pos = torch.cat((self._encode(y_embed), self._encode(x_embed)), dim=3)  # (B, H, W, 2F)
        return pos.permute(0, 3, 1, 2)  # (B, 2F, H, W)

    def _unpadded(self, b: int, h: int, w: int, device: torch.device) -> torch.Tensor:
        """The encoding without padding, which is separable: every row has the same x half and
        every column the same y half, so the H + W positions are encoded once, not H * W
        (same values as the masked path with an all-False mask). (B, 2F, H, W) in the
        masked path's memory layout (a permuted (B, H, W, 2F) tensor)."""
        y_embed = torch.arange(1, h + 1, dtype=torch.float32, device=device)  # (H,)
        x_embed = torch.arange(1, w + 1, dtype=torch.float32, device=device)  # (W,)
        if self.normalize:
            y_embed = y_embed / (y_embed[-1:] + _EPS) * self.scale
            x_embed = x_embed / (x_embed[-1:] + _EPS) * self.scale
        f = self.num_pos_feats
        pos = torch.empty((b, h, w, 2 * f), dtype=torch.float32, device=device)
        pos[..., :f] = self._encode(y_embed)[:, None]  # (H, 1, F) over the columns
        pos[..., f:] = self._encode(x_embed)  # (W, F) over the rows
        return pos.permute(0, 3, 1, 2)  # (B, 2F, H, W)

    def _encode(self, embed: torch.Tensor) -> torch.Tensor:
        """Positions (...) -> (..., F): sin on even channels, cos on odd ones, interleaved."""
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=embed.device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.num_pos_feats)  # (F,)
        pos = embed[..., None] / dim_t  # (..., F)
        return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)

    def extra_repr(self) -> str:
        return (
            f"num_pos_feats={self.num_pos_feats}, temperature={self.temperature}, "
            f"normalize={self.normalize}, scale={self.scale}"
        )
