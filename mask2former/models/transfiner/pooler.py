"""Mask Transfiner's RoI feature pyramid: the stock 14x14 mask pooling plus 28/56/112 poolings of
one, two and three FPN levels finer, on P2 enhanced by a small conv refiner (spec section 2).

The reference edits Detectron2's ``ROIPooler`` in place (a switch on ``output_size > 7``); here
a module composes the stock pooler. The refiner keeps the reference's module name
(``conv_norm_relus_semantic``) so that its checkpoints load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from detectron2.modeling.poolers import ROIPooler, assign_boxes_to_levels
from detectron2.structures import Boxes
from torch import nn
from torchvision.ops import roi_align

__all__ = ["TransfinerPooled", "TransfinerPooler", "refine_subset"]


@dataclass
class TransfinerPooled:
    """What :class:`TransfinerPooler` hands to the mask head.

    Attributes:
        coarse: (R, C, P, P) RoI features of all R RoIs (P = 14), from the original P2-P5.
        fine: per quadtree level, (R', C, s, s) features of the refined RoIs (s = 28, 56, 112).
        refine_index: (R',) long, indices of the refined RoIs among the R (per image, in order).
        p2_residual: (B, C, H/4, W/4) the refiner's output S (P2' = P2 + S).
        p2_stride: stride of P2 in image pixels.
        refine_limit: RoIs refined per image (the first ones of each image are).
    """

    coarse: torch.Tensor
    fine: list[torch.Tensor]
    refine_index: torch.Tensor
    p2_residual: torch.Tensor
    p2_stride: int
    refine_limit: int


def refine_subset(num_per_image: list[int], limit: int, device: torch.device) -> torch.Tensor:
    """Indices (into the concatenated RoIs of the batch) of the first ``limit`` RoIs of each
    image; the reference counts the limit over the whole batch (spec 12.1).

    Returns:
        (R',) long.
    """
    chunks, start = [], 0
    for n in num_per_image:
        chunks.append(torch.arange(start, start + min(n, max(limit, 0)), device=device))
        start += n
    if not chunks:
        return torch.zeros(0, dtype=torch.long, device=device)
    return torch.cat(chunks)  # (R',)


class TransfinerPooler(nn.Module):
    """14x14 pooling of every RoI, and 28/56/112 pooling of a subset at FPN levels
    ``max(k - 1, 2)``, ``max(k - 2, 2)``, ``max(k - 3, 2)`` (k: the box's canonical level)."""

    def __init__(
        self,
        *,
        output_size: int,
        scales: tuple[float, ...],
        sampling_ratio: int,
        pooler_type: str,
        level_sizes: tuple[int, ...],
        channels: int,
        num_refine_convs: int,
        canonical_box_size: int = 224,
        canonical_level: int = 4,
    ):
        """
        Args:
            output_size: side of the coarse pooling (ROI_MASK_HEAD.POOLER_RESOLUTION).
            scales: 1 / stride of each input feature map, finest first (P2 first).
            sampling_ratio: RoIAlign samples per bin (0: adaptive).
            pooler_type: of the coarse pooling; the fine poolings are always "ROIAlignV2".
            level_sizes: sides of the fine poolings, one per quadtree level.
            channels: feature channels (all levels).
            num_refine_convs: 3x3 convs of the P2 refiner (ReLU between them, none after).
        """
        super().__init__()
        if num_refine_convs < 1:
            raise ValueError(f"P2_REFINE_CONVS must be >= 1, got {num_refine_convs}")
        self.coarse = ROIPooler(
            output_size=output_size,
            scales=scales,
            sampling_ratio=sampling_ratio,
            pooler_type=pooler_type,
            canonical_box_size=canonical_box_size,
            canonical_level=canonical_level,
        )
        layers: list[nn.Module] = []
        for i in range(num_refine_convs):
            layers.append(nn.Conv2d(channels, channels, 3, 1, 1))
            if i < num_refine_convs - 1:
                layers.append(nn.ReLU())
        self.conv_norm_relus_semantic = nn.Sequential(*layers)
        self.scales = tuple(scales)
        self.level_sizes = tuple(level_sizes)
        self.sampling_ratio = sampling_ratio
        self.min_level = int(round(-math.log2(scales[0])))
        self.max_level = int(round(-math.log2(scales[-1])))
        self.canonical_box_size = canonical_box_size
        self.canonical_level = canonical_level

    def box_levels(self, box_lists: list[Boxes]) -> torch.Tensor:
        """(R,) long: each box's feature map index (0 = P2) by Detectron2's FPN rule."""
        return assign_boxes_to_levels(
            box_lists, self.min_level, self.max_level, self.canonical_box_size,
            self.canonical_level,
        )

    def forward(
        self, features: list[torch.Tensor], box_lists: list[Boxes], refine_limit: int
    ) -> TransfinerPooled:
        """
        Args:
            features: P2..P5, each (B, C, H_l, W_l).
            box_lists: B Boxes in image coordinates.
            refine_limit: the first ``refine_limit`` RoIs of each image are pooled at the fine
                sizes.
        """
        refine_index = refine_subset(
            [len(b) for b in box_lists], refine_limit, features[0].device
        )  # (R',)
        coarse = self.coarse(features, box_lists)  # (R, C, P, P)
        residual = self.conv_norm_relus_semantic(features[0])  # (B, C, H/4, W/4)
        enhanced = [features[0] + residual, *features[1:]]
        boxes = torch.cat(
            [
                torch.cat([torch.full_like(b.tensor[:, :1], i), b.tensor], dim=1)
                for i, b in enumerate(box_lists)
            ]
        ) if box_lists else features[0].new_zeros((0, 5))  # (R, 5): image index, x0, y0, x1, y1
        boxes = boxes[refine_index]  # (R', 5)
        levels = (
            self.box_levels(box_lists)[refine_index]
            if len(box_lists) and boxes.shape[0]
            else refine_index.new_zeros(0)
        )  # (R',)
        fine = []
        for shift, size in enumerate(self.level_sizes, start=1):
            shifted = (levels - shift).clamp(min=0)  # (R',)
            out = features[0].new_zeros((boxes.shape[0], features[0].shape[1], size, size))
            for level, scale in enumerate(self.scales):
                inds = torch.nonzero(shifted == level).flatten()
                if inds.numel() == 0:
                    continue
                pooled = roi_align(
                    enhanced[level], boxes[inds].to(enhanced[level].dtype), (size, size),
                    spatial_scale=scale, sampling_ratio=self.sampling_ratio, aligned=True,
                )  # (n, C, size, size)
                out = out.index_put((inds,), pooled)
            fine.append(out)  # (R', C, size, size)
        return TransfinerPooled(
            coarse=coarse,
            fine=fine,
            refine_index=refine_index,
            p2_residual=residual,
            p2_stride=int(round(1 / self.scales[0])),
            refine_limit=refine_limit,
        )
