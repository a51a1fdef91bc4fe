"""MP-Former's mask piloting: the decoder variant that adds the mask-piloted (MP) queries.

In training, next to the Q matching queries the decoder runs P = G * M extra *MP queries*
(G groups, M = most ground-truth objects of an image in the batch). Slot ``g * M + j`` of image b
holds object j of group g (slots with j >= n_b are padding). An MP query's content is the
embedding of its (possibly flipped) class, ``label_enc``; its cross-attention mask is its GT mask,
area-pooled to the level read and optionally point-noised, at every layer (or layers 0-3). In the
self-attention, matching queries see no MP query and a group sees no other group, so the matching
branch computes exactly what Mask2Former computes.

:class:`MaskPiloting` is a :class:`~mask2former.models.mask2former.variant.DecoderVariant`: the
decoder's ``variant`` submodule, whose only weight is ``label_enc.weight``
(``sem_seg_head.predictor.variant.label_enc.weight``). Its loss is in ``loss.py``.
"""

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..mask2former.variant import DecoderVariant, ExtraQueries, VariantLoss

__all__ = ["MaskPiloting", "PilotPlan", "area_pool_allowed"]

# NUM_GROUPS at or above this is a total budget of MP queries per image (reference rule).
GROUP_BUDGET_THRESHOLD = 100
# Without PILOT_ALL_LAYERS, layers 0..PILOTED_LAYERS-1 read GT masks (reference: ALL_LY_DN False).
PILOTED_LAYERS = 4
# Objects area-pooled at once (bounds the float copy of full-resolution GT masks).
_POOL_CHUNK = 16


@dataclass
class PilotPlan:
    """The MP queries of one training iteration.

    Attributes:
        content: (P, B, C) MP query content (zeros at padding slots).
        self_attn_mask: (P+Q, P+Q) bool, True = blocked; MP slots first.
        level_masks: per decoder level, (B, P, H_l*W_l) bool, True = allowed (GT cell).
        level_sizes: (H_l, W_l) per level.
        area_fraction: per level, (B, P, 1) allowed cells / H_l*W_l (0 at padding slots).
        indices: per image, (slot indices, target indices) of the fixed assignment.
        num_groups: G.
        max_objects: M.
    """

    content: torch.Tensor
    self_attn_mask: torch.Tensor
    level_masks: list[torch.Tensor]
    level_sizes: list[tuple[int, int]]
    area_fraction: list[torch.Tensor]
    indices: list[tuple[torch.Tensor, torch.Tensor]]
    num_groups: int
    max_objects: int

    @property
    def num_slots(self) -> int:
        """P = G * M."""
        return self.num_groups * self.max_objects


def area_pool_allowed(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Cells of ``size`` that contain any pixel of each mask (area interpolation > 1e-8).

    Args:
        masks: (N, H, W) binary masks (bool or float).
        size: (h, w).

    Returns:
        (N, h*w) bool, True = allowed.
    """
    out = []
    for chunk in masks.split(_POOL_CHUNK):
        pooled = F.interpolate(chunk[None].float(), size=size, mode="area")  # (1, n, h, w)
        out.append((pooled[0] > 1e-8).flatten(1))  # (n, h*w)
    if not out:
        return masks.new_zeros((0, size[0] * size[1]), dtype=torch.bool)
    return torch.cat(out)


class MaskPiloting(DecoderVariant):
    """Builds the MP queries, their self-attention mask and cross-attention hook (see the
    module docstring). Its extra outputs are ``"mp_outputs"``, with the fixed assignment
    ("indices") and "num_groups".

    Args:
        num_classes: K (``label_enc`` has K rows, no "no object").
        hidden_dim: C.
        num_heads: attention heads of the decoder.
        num_groups: G; >= 100 is a per-image budget, G = num_groups // M.
        mask_noise_ratio: s; each cell flips with probability s * (mask area fraction).
        per_head_noise: draw the point noise per head.
        label_noise_ratio: probability of replacing a class by a uniform random one (<= 0: off;
            the draw may return the same class, so the effective flip rate is p * (K-1)/K).
        pilot_all_layers: GT masks at every layer; else only layers 0-3.
        loss: the MP queries' loss (:class:`~.loss.MaskPilotingLoss`), or None.
    """

    output_key = "mp_outputs"

    def __init__(
        self,
        *,
        num_classes: int,
        hidden_dim: int,
        num_heads: int,
        num_groups: int = 1,
        mask_noise_ratio: float = 0.0,
        per_head_noise: bool = False,
        label_noise_ratio: float = 0.2,
        pilot_all_layers: bool = True,
        loss: VariantLoss | None = None,
    ):
        super().__init__(loss=loss)
        if num_groups < 1:
            raise ValueError(f"MODEL.MP_FORMER.NUM_GROUPS must be >= 1, got {num_groups}")
        if not 0.0 <= mask_noise_ratio <= 1.0:
            raise ValueError(
                f"MODEL.MP_FORMER.MASK_NOISE_RATIO must be in [0, 1], got {mask_noise_ratio}"
            )
        if label_noise_ratio > 1.0:
            raise ValueError(
                f"MODEL.MP_FORMER.LABEL_NOISE_RATIO must be <= 1, got {label_noise_ratio}"
            )
        self.num_classes = num_classes
        self.num_heads = num_heads
        self.num_groups = num_groups
        self.mask_noise_ratio = mask_noise_ratio
        self.per_head_noise = per_head_noise
        self.label_noise_ratio = label_noise_ratio
        self.pilot_all_layers = pilot_all_layers
        self.label_enc = nn.Embedding(num_classes, hidden_dim)  # (K, C) class -> query content

    def groups_for(self, max_objects: int) -> int:
        """G for a batch whose largest image has ``max_objects`` GTs (0 when nothing to pilot)."""
        if max_objects == 0:
            return 0
        if self.num_groups >= GROUP_BUDGET_THRESHOLD:
            return self.num_groups // max_objects
        return self.num_groups

    # ------------------------------------------------------------------ plan
    def noisy_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Each label replaced by a uniform class in [0, K) with probability label_noise_ratio."""
        if self.label_noise_ratio <= 0 or labels.numel() == 0:
            return labels
        flip = torch.rand(labels.shape, device=labels.device) < self.label_noise_ratio  # (N,)
        random_labels = torch.randint_like(labels, 0, self.num_classes)  # (N,)
        return torch.where(flip, random_labels, labels)

    def plan(
        self, targets: list[dict], level_sizes: list[tuple[int, int]], num_queries: int
    ) -> PilotPlan | None:
        """The MP queries of this batch, or None when there is nothing to pilot (skip rule).

        Args:
            targets: per image, "labels" (n_b,) int64 and "masks" (n_b, H, W) at the padded
                input size.
            level_sizes: (H_l, W_l) of the decoder's memory levels, in the order it reads them.
            num_queries: Q, the matching queries placed after the MP slots.
        """
        counts = [len(t["labels"]) for t in targets]
        max_objects = max(counts, default=0)
        num_groups = self.groups_for(max_objects)
        if num_groups == 0:
            return None
        device = self.label_enc.weight.device
        batch_size, num_slots = len(targets), num_groups * max_objects

        batch_idx, slot_idx, labels, indices = [], [], [], []
        for b, (t, n) in enumerate(zip(targets, counts)):
            objects = torch.arange(n, device=device)  # (n,)
            slots = (torch.arange(num_groups, device=device)[:, None] * max_objects
                     + objects[None]).flatten()  # (G*n,) slot g*M + j
            batch_idx.append(torch.full_like(slots, b))
            slot_idx.append(slots)
            labels.append(t["labels"].to(device).repeat(num_groups))  # (G*n,)
            indices.append((slots, objects.repeat(num_groups)))
        batch_idx, slot_idx = torch.cat(batch_idx), torch.cat(slot_idx)  # (sum G*n_b,)
        embedded = self.label_enc(self.noisy_labels(torch.cat(labels)))  # (sum G*n_b, C)
        content = embedded.new_zeros((batch_size, num_slots, embedded.shape[-1]))  # (B, P, C)
        content = content.index_put((batch_idx, slot_idx), embedded).transpose(0, 1)  # (P, B, C)

        level_masks, area_fraction = [], []
        for size in level_sizes:
            allowed = torch.zeros(
                (batch_size, num_slots, size[0] * size[1]), dtype=torch.bool, device=device
            )  # (B, P, h*w)
            for b, t in enumerate(targets):
                if counts[b]:
                    pooled = area_pool_allowed(t["masks"].to(device), size)  # (n_b, h*w)
                    allowed[b].view(num_groups, max_objects, -1)[:, : counts[b]] = pooled
            level_masks.append(allowed)
            area_fraction.append(allowed.float().mean(-1, keepdim=True))  # (B, P, 1)

        return PilotPlan(
            content=content,
            self_attn_mask=self.self_attn_mask(num_groups, max_objects, num_queries, device),
            level_masks=level_masks,
            level_sizes=list(level_sizes),
            area_fraction=area_fraction,
            indices=indices,
            num_groups=num_groups,
            max_objects=max_objects,
        )

    @staticmethod
    def self_attn_mask(
        num_groups: int, max_objects: int, num_queries: int, device: torch.device
    ) -> torch.Tensor:
        """(P+Q, P+Q) bool, True = blocked: matching rows see no MP slot, MP rows see only
        their own group (padding slots included) and all matching queries."""
        num_slots = num_groups * max_objects
        mask = torch.zeros(
            (num_slots + num_queries, num_slots + num_queries), dtype=torch.bool, device=device
        )  # (P+Q, P+Q)
        group = torch.arange(num_slots, device=device) // max_objects  # (P,)
        mask[:num_slots, :num_slots] = group[:, None] != group[None, :]
        mask[num_slots:, :num_slots] = True
        return mask

    # ------------------------------------------------------------------ decoder hooks
    def is_piloted(self, layer: int) -> bool:
        """Whether layer ``layer`` reads GT masks for the MP queries."""
        return self.pilot_all_layers or layer < PILOTED_LAYERS

    def blocked_rows(self, plan: PilotPlan, level: int) -> torch.Tensor:
        """MP rows of a cross-attention mask at ``level``, point noise drawn afresh.

        Returns:
            (B, heads, P, H_l*W_l) bool (heads dim of size 1 without per-head noise),
            True = blocked.
        """
        allowed = plan.level_masks[level][:, None]  # (B, 1, P, hw)
        if self.mask_noise_ratio > 0:
            heads = self.num_heads if self.per_head_noise else 1
            b, _, p, hw = allowed.shape
            rate = (self.mask_noise_ratio * plan.area_fraction[level])[:, None]  # (B, 1, P, 1)
            flips = torch.rand((b, heads, p, hw), device=allowed.device) < rate  # (B, h, P, hw)
            allowed = allowed ^ flips
        return ~allowed

    def cross_attn_mask(
        self, plan: PilotPlan, layer: int, attn_mask: torch.Tensor, size: tuple[int, int]
    ) -> torch.Tensor:
        """Decoder hook: overwrite the MP rows of layer ``layer``'s cross-attention mask.

        Args:
            attn_mask: (B*heads, P+Q, H_l*W_l) bool from the predictions, True = blocked.
            size: (H_l, W_l) of the level the layer reads.
        """
        if not self.is_piloted(layer):
            return attn_mask
        level = layer % len(plan.level_sizes)
        if tuple(size) != tuple(plan.level_sizes[level]):
            raise ValueError(f"MP-Former: layer {layer} reads {size}, planned for "
                             f"{plan.level_sizes[level]}")
        p = plan.num_slots
        rows = attn_mask.view(-1, self.num_heads, *attn_mask.shape[1:])  # (B, heads, P+Q, hw)
        mp_rows = self.blocked_rows(plan, level).expand(-1, self.num_heads, -1, -1)
        return torch.cat([mp_rows, rows[:, :, p:]], dim=2).flatten(0, 1)  # (B*heads, P+Q, hw)

    def extra_queries(
        self, targets: list[dict], level_sizes: list[tuple[int, int]], num_queries: int
    ) -> ExtraQueries | None:
        """The variant hook of the decoder: the MP queries (no positions) with their masks."""
        plan = self.plan(targets, level_sizes, num_queries)
        if plan is None:
            return None
        return ExtraQueries(
            content=plan.content,  # (P, B, C)
            self_attn_mask=plan.self_attn_mask,  # (P+Q, P+Q)
            cross_attn_mask_fn=functools.partial(self.cross_attn_mask, plan),
            info={"indices": plan.indices, "num_groups": plan.num_groups},
        )

    def extra_repr(self) -> str:
        return (
            f"num_groups={self.num_groups}, mask_noise_ratio={self.mask_noise_ratio}, "
            f"per_head_noise={self.per_head_noise}, label_noise_ratio={self.label_noise_ratio}, "
            f"pilot_all_layers={self.pilot_all_layers}"
        )
