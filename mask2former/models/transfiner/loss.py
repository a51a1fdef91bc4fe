"""Mask Transfiner's training targets per image and its losses (spec section 7)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from detectron2.structures import BitMasks, Instances, PolygonMasks
from torch.nn import functional as F

from .targets import binary_boundary, incoherence_target

__all__ = ["MaskTargets", "build_mask_targets", "dice_loss", "semantic_target"]


@dataclass
class MaskTargets:
    """Targets of the foreground RoIs of a batch (R RoIs; R' of them refined).

    Attributes:
        classes: (R,) long GT classes.
        coarse: (R, S, S) float GT masks at the coarse size S.
        context: (R', P, P) float GT masks at the context size P (refined RoIs only).
        levels: per quadtree level, (R', s, s) float GT masks (refined RoIs only).
        incoherence: (R, S, S) float incoherence targets.
        boundary: (R, S, S) float contour targets.
    """

    classes: torch.Tensor
    coarse: torch.Tensor
    context: torch.Tensor
    levels: list[torch.Tensor]
    incoherence: torch.Tensor
    boundary: torch.Tensor


def _crop(instances: Instances, size: int, device: torch.device) -> torch.Tensor:
    """GT masks of the RoIs cropped to their proposal boxes at size x size -> (n, size, size)."""
    if len(instances) == 0:
        return torch.zeros((0, size, size), device=device)
    masks = instances.gt_masks.crop_and_resize(instances.proposal_boxes.tensor, size)
    return masks.to(device=device, dtype=torch.float32)


def build_mask_targets(
    instances: list[Instances],
    *,
    coarse_size: int,
    context_size: int,
    level_sizes: tuple[int, ...],
    refine_limit: int,
    residue_thresh: float,
    crop_thresh: float,
    signed_residue: bool = True,
    device: torch.device,
) -> MaskTargets:
    """Targets for the foreground proposals of each image (``proposal_boxes``, ``gt_masks``,
    ``gt_classes``); the first ``refine_limit`` RoIs of each image are the refined ones."""
    classes, coarse, context, incoherent = [], [], [], []
    levels: list[list[torch.Tensor]] = [[] for _ in level_sizes]
    for inst in instances:
        classes.append(inst.gt_classes.to(device=device, dtype=torch.long))
        coarse.append(_crop(inst, coarse_size, device))
        incoherent.append(
            incoherence_target(
                _crop(inst, 2 * coarse_size, device),
                residue_thresh=residue_thresh,
                crop_thresh=crop_thresh,
                signed=signed_residue,
            )
        )
        subset = inst[: max(refine_limit, 0)]
        context.append(_crop(subset, context_size, device))
        for i, size in enumerate(level_sizes):
            levels[i].append(_crop(subset, size, device))
    def empty(size: int) -> torch.Tensor:
        return torch.zeros((0, size, size), device=device)  # (0, size, size)

    coarse_t = torch.cat(coarse) if coarse else empty(coarse_size)
    return MaskTargets(
        classes=torch.cat(classes) if classes else torch.zeros(0, dtype=torch.long, device=device),
        coarse=coarse_t,
        context=torch.cat(context) if context else empty(context_size),
        levels=[torch.cat(chunks) if chunks else empty(s)
                for chunks, s in zip(levels, level_sizes)],
        incoherence=torch.cat(incoherent) if incoherent else torch.zeros_like(coarse_t),
        boundary=binary_boundary(coarse_t),
    )


def semantic_target(
    instances: list[Instances], size: tuple[int, int], stride: int, device: torch.device
) -> torch.Tensor:
    """Foreground of each image at P2's grid: the union of the GT masks matched to its foreground
    proposals, padded to the batch's padded size and nearest-resized to ``size``.

    Returns:
        (B, 1, H/stride, W/stride) float; all zeros for an image without foreground proposals
        (the reference drops such images from the targets only, spec 12.6).
    """
    height, width = size[0] * stride, size[1] * stride
    out = []
    for inst in instances:
        union = torch.zeros((height, width), device=device)
        if len(inst):
            masks = inst.gt_masks
            if isinstance(masks, PolygonMasks):
                h, w = inst.image_size
                masks = BitMasks.from_polygon_masks(masks, h, w)
            full = masks.tensor.to(device).any(0).float()  # (h, w)
            h, w = min(full.shape[0], height), min(full.shape[1], width)
            union[:h, :w] = full[:h, :w]
        out.append(union)
    if not out:
        return torch.zeros((0, 1, *size), device=device)
    stacked = torch.stack(out).unsqueeze(1)  # (B, 1, H, W)
    return F.interpolate(stacked, size, mode="nearest")  # (B, 1, H/stride, W/stride)


def dice_loss(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice loss with +1 smoothing, summed over RoIs and divided by their number (reference)."""
    probs = probs.flatten(1)  # (R, S*S)
    targets = targets.flatten(1)  # (R, S*S)
    numerator = 2 * (probs * targets).sum(1)
    denominator = probs.sum(1) + targets.sum(1)
    loss = 1 - (numerator + 1) / (denominator + 1)  # (R,)
    return loss.sum() / max(probs.shape[0], 1)
