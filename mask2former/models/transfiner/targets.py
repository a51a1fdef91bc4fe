"""Per-RoI training targets of Mask Transfiner and the small tensor ops they use.

All functions are batched over RoIs and run on the input's device: the reference computes the
incoherence target on full-image masks and the boundary target with numpy per RoI (spec 12.5,
12.8); here both are computed on RoI crops with torch ops.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

__all__ = [
    "binary_boundary",
    "dilate_cross",
    "erode_cross",
    "incoherence_target",
    "sine_position_encoding",
]


def dilate_cross(masks: torch.Tensor) -> torch.Tensor:
    """Binary dilation with the 3x3 cross (4-connectivity), outside the image counting as 0.

    Args:
        masks: (R, 1, H, W) float in {0, 1}.
    """
    vertical = F.max_pool2d(masks, (3, 1), stride=1, padding=(1, 0))  # (R, 1, H, W)
    horizontal = F.max_pool2d(masks, (1, 3), stride=1, padding=(0, 1))  # (R, 1, H, W)
    return torch.maximum(vertical, horizontal)


def erode_cross(masks: torch.Tensor) -> torch.Tensor:
    """Binary erosion with the 3x3 cross; pixels outside the image do not erode (as skimage)."""
    return -dilate_cross(-masks)


def binary_boundary(masks: torch.Tensor) -> torch.Tensor:
    """The 2-pixel contour of each mask: dilation XOR erosion (3x3 cross), as the reference's
    ``get_instances_contour_interior`` (skimage ``binary_dilation != binary_erosion``).

    Args:
        masks: (R, H, W) bool or float in {0, 1}.

    Returns:
        (R, H, W) float in {0, 1}.
    """
    m = masks.float().unsqueeze(1)  # (R, 1, H, W)
    return (dilate_cross(m) - erode_cross(m)).squeeze(1)  # (R, H, W)


def incoherence_target(
    masks: torch.Tensor,
    *,
    residue_thresh: float = 0.01,
    crop_thresh: float = 0.05,
    signed: bool = True,
) -> torch.Tensor:
    """Incoherent cells of RoI masks: where halving the resolution loses information.

    With ``m`` the RoI mask at 2S x 2S: ``r = m - up(down(m))`` (bilinear, half size and
    back), ``r`` bilinearly down to S x S, values >= ``residue_thresh`` set to 1, and the target
    is ``r >= crop_thresh`` (spec section 1, computed on the RoI crop instead of the full image).

    Args:
        masks: (R, 2S, 2S) RoI masks in [0, 1] (e.g. the GT cropped at twice the coarse size).
        signed: keep the residue's sign, as the reference's code does (``mask - mask_recover``):
            only the cells on the inner side of a contour (and in thin parts) count; False uses
            ``|r|`` as the paper and the spec describe it (both sides of the contour).

    Returns:
        (R, S, S) float in {0, 1}.
    """
    if masks.shape[-1] % 2 or masks.shape[-2] % 2:
        raise ValueError(f"incoherence_target needs even mask sides, got {tuple(masks.shape)}")
    m = masks.float().unsqueeze(1)  # (R, 1, 2S, 2S)
    half = (m.shape[-2] // 2, m.shape[-1] // 2)
    if m.shape[0] == 0:
        return m.new_zeros((0, *half))
    recovered = F.interpolate(
        F.interpolate(m, half, mode="bilinear", align_corners=False),  # (R, 1, S, S)
        m.shape[-2:],
        mode="bilinear",
        align_corners=False,
    )  # (R, 1, 2S, 2S)
    diff = m - recovered  # (R, 1, 2S, 2S)
    residue = F.interpolate(
        diff if signed else diff.abs(), half, mode="bilinear", align_corners=False
    )  # (R, 1, S, S)
    residue = torch.where(residue >= residue_thresh, torch.ones_like(residue), residue)
    return (residue >= crop_thresh).float().squeeze(1)  # (R, S, S)


def sine_position_encoding(
    size: int, dim: int, *, temperature: float = 10000.0, device: torch.device | None = None
) -> torch.Tensor:
    """DETR-style sine encoding of the cells of a ``size`` x ``size`` RoI grid.

    Cell (i, j) has coordinates ((i + 1) / size, (j + 1) / size) * 2 pi (so the encoding is of the
    relative position inside the RoI); each axis takes ``dim / 2`` channels, pairs of
    (sin, cos) at frequencies ``temperature ** (2k / (dim / 2))``; y channels first.

    Returns:
        (1, dim, size, size) in [-1, 1].
    """
    if dim % 2:
        raise ValueError(f"the position encoding width must be even, got {dim}")
    half = dim // 2
    eps = 1e-6
    coords = torch.arange(1, size + 1, dtype=torch.float32, device=device)
    coords = coords / (size + eps) * (2 * math.pi)  # (S,)
    k = torch.arange(half, dtype=torch.float32, device=device)
    freqs = temperature ** (2 * torch.div(k, 2, rounding_mode="floor") / half)  # (D/2,)
    angles = coords[:, None] / freqs  # (S, D/2)
    codes = torch.where(k.long() % 2 == 0, angles.sin(), angles.cos())  # (S, D/2)
    pos_y = codes[:, None, :].expand(size, size, half)  # (S, S, D/2), varies along rows
    pos_x = codes[None, :, :].expand(size, size, half)  # (S, S, D/2), varies along columns
    return torch.cat([pos_y, pos_x], dim=-1).permute(2, 0, 1).unsqueeze(0)  # (1, D, S, S)
