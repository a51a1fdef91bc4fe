"""Sine positional encoding of 2-D feature maps (DETR), shared by pixel and transformer decoders.

Channels are ``[y (num_pos_feats) ; x (num_pos_feats)]``; within each half, channel ``2j``
holds ``sin(p / T^(2j/F))`` and channel ``2j+1`` holds ``cos(p / T^(2j/F))`` (F =
num_pos_feats, T = temperature), where ``p`` is the 1-based row (column) index of the unmasked
pixel, optionally normalised to ``p / count * scale``.
"""

import math

import torch
from torch import nn


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
            mask = torch.zeros((x.size(0), x.size(2), x.size(3)), device=x.device, dtype=torch.bool)
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)  # (B, H, W), 1-based row index
        x_embed = not_mask.cumsum(2, dtype=torch.float32)  # (B, H, W), 1-based column index
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale

        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.num_pos_feats)  # (F,)

        pos_x = x_embed[:, :, :, None] / dim_t  # (B, H, W, F)
        pos_y = y_embed[:, :, :, None] / dim_t  # (B, H, W, F)
        # sin on even channels, cos on odd ones, interleaved: (B, H, W, F/2, 2) -> (B, H, W, F)
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)  # (B, 2F, H, W)

    def extra_repr(self) -> str:
        return (
            f"num_pos_feats={self.num_pos_feats}, temperature={self.temperature}, "
            f"normalize={self.normalize}, scale={self.scale}"
        )
