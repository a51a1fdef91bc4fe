"""MP-Former's mask-piloted (MP) training, composed onto Mask2Former's decoder and criterion.

In training, next to the Q matching queries the decoder runs P = G * M extra *MP queries*
(G groups, M = most ground-truth objects of an image in the batch). Slot ``g * M + j`` of image b
holds object j of group g (slots with j >= n_b are padding). An MP query's content is the
embedding of its (possibly flipped) class, ``label_enc``; its cross-attention mask is its GT mask,
area-pooled to the level read and optionally point-noised, at every layer (or layers 0-3). In the
self-attention, matching queries see no MP query and a group sees no other group, so the matching
branch computes exactly what Mask2Former computes. Each MP query is supervised against the GT that
piloted it (fixed assignment) with the matching losses, under the key suffix ``_mp``.

:class:`MaskPiloting` is the decoder's optional ``piloting`` submodule (its parameter
``sem_seg_head.predictor.piloting.label_enc.weight`` is the only new weight), and
:class:`MaskPilotingLoss` is the meta-architecture's extra loss. Inference never uses either.

Config keys (``MODEL.MP_FORMER``) and the reference code's names::

    ENABLED            decoder name MultiScaleMaskedTransformerDecoderMaskDN + DN_MODE "points"
    NUM_GROUPS         MODEL.DN.NUM_DN (>= 100: a budget, G = NUM_GROUPS // M)
    MASK_NOISE_RATIO   MODEL.DN.NOISE_SCALE
    PER_HEAD_NOISE     MODEL.MASK_FORMER.HEAD_DN
    LABEL_NOISE_RATIO  MODEL.MASK_FORMER.LB_NOISE_RATIO (<= 0: off)
    PILOT_ALL_LAYERS   MODEL.MASK_FORMER.ALL_LY_DN
    CLASS_LOSS         not MODEL.MASK_FORMER.DN_NO_LB
    QUERY_POS          "none" = the fork (no query_embed); "learned" keeps Mask2Former's
"""

import functools
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import nn

__all__ = [
    "MaskPiloting",
    "MaskPilotingLoss",
    "PilotPlan",
    "adapt_mp_former_keys",
    "build_mask_piloting",
    "mp_loss_names",
]

logger = logging.getLogger(__name__)

# NUM_GROUPS at or above this is a total budget of MP queries per image (reference rule).
GROUP_BUDGET_THRESHOLD = 100
# Without PILOT_ALL_LAYERS, layers 0..PILOTED_LAYERS-1 read GT masks (reference: ALL_LY_DN False).
PILOTED_LAYERS = 4
# Objects area-pooled at once (bounds the float copy of full-resolution GT masks).
_POOL_CHUNK = 16
LOSS_SUFFIX = "_mp"


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


class MaskPiloting(nn.Module):
    """Builds the MP queries, the self-attention mask and the cross-attention hook (see module
    docstring) and splits the decoder's predictions into matching and MP parts.

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
    """

    @configurable
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
    ):
        super().__init__()
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

    @classmethod
    def from_config(cls, cfg):
        mp = cfg.MODEL.MP_FORMER
        return {
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "hidden_dim": cfg.MODEL.MASK_FORMER.HIDDEN_DIM,
            "num_heads": cfg.MODEL.MASK_FORMER.NHEADS,
            "num_groups": mp.NUM_GROUPS,
            "mask_noise_ratio": mp.MASK_NOISE_RATIO,
            "per_head_noise": mp.PER_HEAD_NOISE,
            "label_noise_ratio": mp.LABEL_NOISE_RATIO,
            "pilot_all_layers": mp.PILOT_ALL_LAYERS,
        }

    def groups_for(self, max_objects: int) -> int:
        """G for a batch whose largest image has ``max_objects`` GTs (0 when nothing to pilot)."""
        if max_objects == 0:
            return 0
        if self.num_groups >= GROUP_BUDGET_THRESHOLD:
            return self.num_groups // max_objects
        return self.num_groups

    def skipped_outputs(self) -> dict:
        """MP outputs of an iteration without MP queries: a zero connected to ``label_enc``."""
        return {"skipped": True, "zero": self.label_enc.weight.sum() * 0.0}

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

    def cross_attn_mask_fn(self, plan: PilotPlan):
        """The ``cross_attn_mask_fn`` hook of :meth:`MultiScaleMaskedTransformerDecoder.decode`."""
        return functools.partial(self.cross_attn_mask, plan)

    @staticmethod
    def split(predictions: list[torch.Tensor | None], plan: PilotPlan):
        """Per prediction point (B, P+Q, ...) -> matching (B, Q, ...) and MP (B, P, ...) lists."""
        p = plan.num_slots
        matching = [None if x is None else x[:, p:] for x in predictions]
        piloted = [None if x is None else x[:, :p] for x in predictions]
        return matching, piloted

    # ------------------------------------------------------------------ decoder forward
    def forward_decoder(
        self,
        decoder: nn.Module,
        output: torch.Tensor,
        query_pos: torch.Tensor | None,
        memory,
        mask_features: torch.Tensor,
        targets: list[dict],
    ) -> dict:
        """Training forward of ``decoder`` with the MP queries placed before its Q queries.

        Args:
            decoder: a :class:`MultiScaleMaskedTransformerDecoder` (its ``decode`` and
                ``format_outputs`` are used).
            output, query_pos: the matching queries (Q, B, C) (query_pos may be None).
            memory: the decoder's ``DecoderMemory``.
            mask_features: (B, MASK_DIM, H/4, W/4).
            targets: per image "labels" (n_b,) and "masks" (n_b, H, W).

        Returns:
            the decoder's output dict for the Q matching queries plus "mp_outputs": the same
            for the P MP slots with "indices" and "num_groups", or :meth:`skipped_outputs`.
        """
        plan = self.plan(targets, memory.sizes, output.shape[0])
        if plan is None:
            out = decoder.format_outputs(*decoder.decode(output, query_pos, memory, mask_features))
            out["mp_outputs"] = self.skipped_outputs()
            return out
        output = torch.cat([plan.content.to(output.dtype), output])  # (P+Q, B, C)
        if query_pos is not None:
            # MP queries have no learned position: zeros.
            zeros = torch.zeros_like(plan.content, dtype=query_pos.dtype)  # (P, B, C)
            query_pos = torch.cat([zeros, query_pos])  # (P+Q, B, C)
        predictions_class, predictions_mask = decoder.decode(
            output,
            query_pos,
            memory,
            mask_features,
            self_attn_mask=plan.self_attn_mask,
            cross_attn_mask_fn=self.cross_attn_mask_fn(plan),
        )
        matching_class, mp_class = self.split(predictions_class, plan)
        matching_mask, mp_mask = self.split(predictions_mask, plan)
        out = decoder.format_outputs(matching_class, matching_mask)
        out["mp_outputs"] = decoder.format_outputs(mp_class, mp_mask)
        out["mp_outputs"].update(indices=plan.indices, num_groups=plan.num_groups)
        return out

    def extra_repr(self) -> str:
        return (
            f"num_groups={self.num_groups}, mask_noise_ratio={self.mask_noise_ratio}, "
            f"per_head_noise={self.per_head_noise}, label_noise_ratio={self.label_noise_ratio}, "
            f"pilot_all_layers={self.pilot_all_layers}"
        )


def adapt_mp_former_keys(
    state_dict: dict, prefix: str, *, with_piloting: bool, with_query_embed: bool
) -> None:
    """Adapt a decoder state dict (keys under ``prefix``) in place to the decoder's MP options.

    - The fork's ``label_enc.weight`` moves to ``piloting.label_enc.weight``.
    - Without piloting, the label embedding (training only) is dropped with an info log, so an
      MP-trained checkpoint loads into plain Mask2Former.
    - Without learned query positions (QUERY_POS "none"), ``query_embed.weight`` is dropped;
      with them, a checkpoint lacking it but holding a label embedding gets a warning (a fork
      checkpoint, which needs QUERY_POS "none").
    """
    fork_key, key = prefix + "label_enc.weight", prefix + "piloting.label_enc.weight"
    has_label_enc = fork_key in state_dict or key in state_dict
    if with_piloting:
        if fork_key in state_dict and key not in state_dict:
            state_dict[key] = state_dict.pop(fork_key)
            logger.info(f"MP-Former checkpoint: loading {fork_key} as {key}.")
    else:
        dropped = [k for k in (fork_key, key) if state_dict.pop(k, None) is not None]
        if dropped:
            logger.info(
                f"Dropped {dropped}: MP-Former's label embedding is used in training only "
                "(MODEL.MP_FORMER.ENABLED is off)."
            )
    embed_key = prefix + "query_embed.weight"
    if not with_query_embed and state_dict.pop(embed_key, None) is not None:
        logger.info(f"Dropped {embed_key}: MODEL.MP_FORMER.QUERY_POS is 'none'.")
    elif with_query_embed and embed_key not in state_dict and has_label_enc:
        logger.warning(
            f"The checkpoint has an MP-Former label embedding but no {embed_key}: it looks like "
            "an MP-Former fork checkpoint; set MODEL.MP_FORMER.QUERY_POS 'none' to load it."
        )


def build_mask_piloting(cfg) -> MaskPiloting | None:
    """The decoder's ``piloting`` submodule, or None when ``MODEL.MP_FORMER.ENABLED`` is off.

    It is initialised without advancing the global random generator, so that every other weight
    of a model built with the same seed is the same with and without MP.
    """
    if not cfg.MODEL.MP_FORMER.ENABLED:
        return None
    with torch.random.fork_rng(devices=[]):
        return MaskPiloting(cfg)


def mp_loss_names(base_names: list[str], num_aux: int, class_loss: bool) -> list[str]:
    """Keys of the MP losses: ``{name}_mp`` and ``{name}_mp_{i}`` for i < num_aux.

    Args:
        base_names: matching loss names, e.g. ["loss_ce", "loss_mask", "loss_dice"].
        num_aux: auxiliary prediction points (DEC_LAYERS - 1 with deep supervision).
        class_loss: keep "loss_ce" (MODEL.MP_FORMER.CLASS_LOSS).
    """
    names = [n for n in base_names if class_loss or n != "loss_ce"]
    keys = [n + LOSS_SUFFIX for n in names]
    for i in range(num_aux):
        keys += [f"{n}{LOSS_SUFFIX}_{i}" for n in names]
    return keys


class MaskPilotingLoss(nn.Module):
    """Losses of the MP queries with the fixed assignment slot g*M + j <-> target j.

    Reuses :meth:`SetCriterion.get_losses_for_indices`: class loss over all P slots (padding
    slots target "no object"; real slots the true class, also when the input label was
    flipped), mask losses on real slots, normalised by N * G (N: the criterion's GT count).

    Args:
        loss_names: keys to emit (:func:`mp_loss_names`); iterations without MP queries emit
            each as a zero connected to ``label_enc``.
        class_loss: include the MP class loss.
    """

    def __init__(self, *, loss_names: list[str], class_loss: bool = True):
        super().__init__()
        self.loss_names = list(loss_names)
        self.class_loss = class_loss

    def forward(self, criterion, mp_outputs: dict, targets: list[dict]) -> dict:
        """
        Args:
            criterion: the :class:`SetCriterion` of the matching queries.
            mp_outputs: the decoder's "mp_outputs": "pred_logits" (B, P, K+1), "pred_masks"
                (B, P, H/4, W/4), "aux_outputs", "indices", "num_groups"; or a skipped marker.
            targets: per image "labels" (n_b,) and "masks" (n_b, H, W).

        Returns:
            unweighted losses keyed by ``loss_names``.
        """
        skipped = mp_outputs.get("skipped", False)
        device = (mp_outputs["zero"] if skipped else mp_outputs["pred_masks"]).device
        # Called on every process whatever its batch, so that the all-reduce stays in step.
        num_masks = criterion.get_num_masks(targets, device)
        if skipped:
            return {k: mp_outputs["zero"].clone() for k in self.loss_names}

        indices = mp_outputs["indices"]
        num_masks = num_masks * mp_outputs["num_groups"]
        points = [mp_outputs, *mp_outputs.get("aux_outputs", [])]
        losses = {}
        for i, out in enumerate(points):
            suffix = LOSS_SUFFIX if i == 0 else f"{LOSS_SUFFIX}_{i - 1}"
            if "loss_mask" + suffix not in self.loss_names:
                continue  # e.g. aux points without deep supervision
            point_losses = criterion.get_losses_for_indices(out, targets, indices, num_masks)
            losses.update({k + suffix: v for k, v in point_losses.items()
                           if self.class_loss or k != "loss_ce"})
        return losses

    def extra_repr(self) -> str:
        return f"class_loss={self.class_loss}, num_losses={len(self.loss_names)}"
