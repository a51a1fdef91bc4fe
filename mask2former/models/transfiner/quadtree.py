"""Quadtree node selection, token sequences and level-by-level refinement (spec sections 4-8).

Everything is batched over RoIs and stays on the input's device. At inference the RoIs' node
sets differ in size: each level's selected cells are packed first (raster order) and padded to
the largest count, and the padding is masked out of attention (``key_padding_mask``), so a RoI's
result does not depend on the other RoIs of the batch.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .encoder import TransfinerEncoder
from .targets import sine_position_encoding

__all__ = [
    "gather_cells",
    "gather_neighbourhoods",
    "pack_selected",
    "refine_levels",
    "sample_nodes",
    "select_nodes",
    "write_levels",
]


def select_nodes(
    incoherence: torch.Tensor,
    thresholds: tuple[float, ...],
    level_sizes: tuple[int, ...],
    *,
    dilate_last: bool = False,
) -> list[torch.Tensor]:
    """Quadtree nodes of each level from the top level's incoherence probabilities.

    Level 0 thresholds ``incoherence`` itself; level i > 0 thresholds its nearest upsampling to
    ``level_sizes[i]``. With non-decreasing thresholds a selected child has a selected parent.

    Args:
        incoherence: (R, 1, S, S) probabilities, S = level_sizes[0].
        thresholds: one per level.
        dilate_last: dilate the last level's node set with a 3x3 square (test-time option).

    Returns:
        Per level, (R, s, s) bool.
    """
    if len(thresholds) != len(level_sizes):
        raise ValueError(
            f"{len(thresholds)} incoherence thresholds for {len(level_sizes)} quadtree levels"
        )
    selected = []
    for i, (size, thresh) in enumerate(zip(level_sizes, thresholds)):
        q = incoherence if i == 0 else F.interpolate(incoherence, (size, size), mode="nearest")
        sel = q >= thresh  # (R, 1, s, s)
        if dilate_last and i == len(level_sizes) - 1:
            sel = F.max_pool2d(sel.float(), 3, stride=1, padding=1) > 0  # (R, 1, s, s)
        selected.append(sel.squeeze(1))  # (R, s, s)
    return selected


def sample_nodes(
    selected: torch.Tensor, num: int, min_nodes: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training: draw ``num`` nodes per RoI in random order, tiled when fewer are selected.

    Args:
        selected: (R, s, s) bool.

    Returns:
        index: (R, num) flat cell indices (meaningless for RoIs without nodes);
        valid: (R,) bool, RoIs with at least ``min_nodes`` selected nodes.
    """
    flat = selected.flatten(1)  # (R, s*s)
    count = flat.sum(1)  # (R,)
    keys = torch.rand(flat.shape, device=flat.device, generator=generator)  # (R, s*s)
    keys = keys + (~flat).float() * 2  # unselected cells sort last
    order = keys.argsort(dim=1)  # (R, s*s)
    slots = torch.arange(num, device=flat.device)[None, :] % count.clamp(min=1)[:, None]  # (R, num)
    return order.gather(1, slots), count >= min_nodes


def pack_selected(selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference: the selected cells of each RoI first (raster order), padded to the largest count.

    Args:
        selected: (R, s, s) bool.

    Returns:
        index: (R, L) flat cell indices (padding entries point at unselected cells);
        padding: (R, L) bool, True at padding. L = the largest count (one device sync).
    """
    flat = selected.flatten(1)  # (R, s*s)
    count = flat.sum(1)  # (R,)
    length = int(count.max()) if flat.shape[0] else 0
    order = (~flat).to(torch.uint8).argsort(dim=1, stable=True)[:, :length]  # (R, L)
    padding = torch.arange(length, device=flat.device)[None, :] >= count[:, None]  # (R, L)
    return order, padding


def gather_cells(maps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Values of (R, C, s, s) maps at flat cells (R, L) -> (R, L, C)."""
    flat = maps.flatten(2)  # (R, C, s*s)
    return flat.gather(2, index[:, None, :].expand(-1, flat.shape[1], -1)).transpose(1, 2)


def gather_neighbourhoods(maps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """3x3 neighbourhoods (zero outside the RoI grid) of flat cells (R, L) of (R, C, s, s) maps
    -> (R, L, 9 * C), neighbours in raster order."""
    num, channels, size, _ = maps.shape
    padded = F.pad(maps, (1, 1, 1, 1))  # (R, C, s+2, s+2)
    y, x = index // size + 1, index % size + 1  # (R, L) in the padded grid
    offsets = torch.arange(-1, 2, device=maps.device)
    ny = (y[..., None, None] + offsets[:, None]).expand(-1, -1, 3, 3)  # (R, L, 3, 3)
    nx = (x[..., None, None] + offsets[None, :]).expand(-1, -1, 3, 3)  # (R, L, 3, 3)
    flat = (ny * (size + 2) + nx).flatten(1)  # (R, L*9)
    feats = gather_cells(padded, flat)  # (R, L*9, C)
    return feats.reshape(num, index.shape[1], 9 * channels)  # (R, L, 9C)


def _with_context(encoder: TransfinerEncoder, maps: torch.Tensor, index: torch.Tensor):
    """Token features at ``index``: the cell's feature, plus its compressed 3x3 neighbourhood
    when the encoder has ``context_fc`` -> (R, L, C)."""
    feats = gather_cells(maps, index)  # (R, L, C)
    if encoder.context_fc is None:
        return feats
    return feats + encoder.context_fc(gather_neighbourhoods(maps, index))  # (R, L, C)


def _resize(probs: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of (R, 1, S, S) probabilities to (R, 1, size, size)."""
    if probs.shape[-1] == size:
        return probs
    return F.interpolate(probs, (size, size), mode="bilinear", align_corners=False)


def refine_levels(
    encoder: TransfinerEncoder,
    *,
    context_feats: torch.Tensor,
    coarse_probs: torch.Tensor,
    level_feats: list[torch.Tensor],
    level_index: list[torch.Tensor],
    level_padding: list[torch.Tensor],
) -> list[torch.Tensor]:
    """Run the encoder on [context tokens, level-0 nodes, level-1 nodes, ...] of each RoI.

    Args:
        context_feats: (R, C, P, P) coarse RoI features (all P*P cells are context tokens).
        coarse_probs: (R, 1, S, S) coarse foreground probabilities (detached).
        level_feats: per level, (R, C, s, s) RoI features.
        level_index: per level, (R, L_i) flat node cells.
        level_padding: per level, (R, L_i) bool, True at nodes that do not exist.

    Returns:
        [context logits (R, P*P), level logits (R, L_i) per level].
    """
    num, _, p, _ = context_feats.shape
    dim = encoder.d_model
    device = context_feats.device
    all_cells = torch.arange(p * p, device=device).expand(num, -1)  # (R, P*P)
    feats = [_with_context(encoder, context_feats, all_cells)]  # [(R, P*P, C)]
    probs = [_resize(coarse_probs, p).flatten(1)]  # [(R, P*P)]
    pos_context = sine_position_encoding(p, dim, device=device).flatten(2).transpose(1, 2)
    pos = [pos_context.expand(num, -1, -1)]  # [(R, P*P, D)]
    padding = [torch.zeros((num, p * p), dtype=torch.bool, device=device)]  # [(R, P*P)]
    for maps, index, pad in zip(level_feats, level_index, level_padding):
        size = maps.shape[-1]
        feats.append(_with_context(encoder, maps, index))  # (R, L_i, C)
        probs.append(_resize(coarse_probs, size).flatten(1).gather(1, index))  # (R, L_i)
        code = sine_position_encoding(size, dim, device=device).expand(num, -1, -1, -1)
        pos.append(gather_cells(code, index))  # (R, L_i, D)
        padding.append(pad)
    logits = encoder(
        torch.cat(feats, dim=1),
        torch.cat(probs, dim=1),
        torch.cat(pos, dim=1).to(context_feats.dtype),
        torch.cat(padding, dim=1),
    )  # (R, P*P + sum L_i)
    sizes = [p * p] + [index.shape[1] for index in level_index]
    return list(logits.split(sizes, dim=1))


def write_levels(
    coarse_probs: torch.Tensor,
    level_probs: list[torch.Tensor],
    level_index: list[torch.Tensor],
    level_padding: list[torch.Tensor],
    level_sizes: tuple[int, ...],
    *,
    align_corners: bool = True,
) -> torch.Tensor:
    """Level-by-level mask assembly: write the refined probabilities at level 0's nodes, upsample
    2x (bilinear), write level 1's nodes, and so on.

    Args:
        coarse_probs: (R, 1, S, S) with S = level_sizes[0].
        level_probs: per level, (R, L_i) refined probabilities.
        align_corners: of the 2x upsamplings. True is the reference's choice; it stretches the
            grid (corner cells to corner cells), so the unrefined cells move outwards by up to
            half a coarse cell. False keeps the cell-centre geometry of RoIAlign's targets.

    Returns:
        (R, 1, s_last, s_last).
    """
    mask = coarse_probs
    for i, (probs, index, pad) in enumerate(zip(level_probs, level_index, level_padding)):
        size = level_sizes[i]
        if mask.shape[-1] != size:
            mask = F.interpolate(
                mask, (size, size), mode="bilinear", align_corners=align_corners
            )  # (R, 1, s, s)
        flat = mask.flatten(1)  # (R, s*s)
        values = torch.where(pad, flat.gather(1, index), probs.to(flat.dtype))  # (R, L_i)
        mask = flat.scatter(1, index, values).view_as(mask)  # (R, 1, s, s)
    return mask
