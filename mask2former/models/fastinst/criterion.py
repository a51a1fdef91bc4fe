"""FastInst's matching and losses on the shared Mask2Former matcher and criterion.

- :class:`FastInstMatcher`: the shared :class:`HungarianMatcher` cost plus a location cost
  (a query whose activation pixel lies outside a ground-truth mask costs ``cost_location``
  more), and the pixel-level assignment of the instance-activation head.
- :class:`FastInstCriterion`: the shared :class:`SetCriterion` losses, with precomputed
  assignments (the GT-mask-guided predictions reuse the last layer's) and the proposal loss.
"""

from __future__ import annotations

import logging

import torch
from detectron2.projects.point_rend.point_features import point_sample
from scipy.optimize import linear_sum_assignment
from torch.nn import functional as F

from ...modeling.criterion import SetCriterion
from ...modeling.matcher import HungarianMatcher, _make_finite

__all__ = ["FastInstMatcher", "FastInstCriterion", "location_cost"]

logger = logging.getLogger(__name__)

Indices = list[tuple[torch.Tensor, torch.Tensor]]


def location_cost(query_locations: torch.Tensor, tgt_masks: torch.Tensor) -> torch.Tensor:
    """-1 where a query's location falls inside a ground-truth mask (bilinear sample > 0).

    Args:
        query_locations: (Q, 2) normalised (x, y).
        tgt_masks: (G, H, W).

    Returns:
        (Q, G) costs in {-1, 0}.
    """
    inside = point_sample(
        tgt_masks.float()[None], query_locations.float()[None], align_corners=False
    )[0]  # (G, Q)
    return -(inside > 0).float().transpose(0, 1)  # (Q, G)


def _solve(cost: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], int]:
    """Hungarian assignment of a (rows, G) cost; returns int64 CPU indices and the number of
    non-finite costs replaced."""
    cost, num_bad = _make_finite(cost.float().cpu())
    i, j = linear_sum_assignment(cost.numpy())
    return (torch.as_tensor(i, dtype=torch.int64), torch.as_tensor(j, dtype=torch.int64)), num_bad


class FastInstMatcher(HungarianMatcher):
    """The shared matcher with FastInst's location cost.

    ``C = cost_class * (-p) + cost_mask * BCE + cost_dice * dice + cost_location * location``
    (``location_cost``). Outputs without "query_locations" get no location term.

    Args:
        cost_location: weight of the location cost (official 1000).
        other arguments: :class:`HungarianMatcher`.
    """

    def __init__(self, *, cost_location: float = 1000.0, **kwargs):
        super().__init__(**kwargs)
        self.cost_location = cost_location

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]) -> Indices:
        """
        Args:
            outputs: "pred_logits" (B, Q, K+1), "pred_masks" (B, Q, h, w), optionally
                "query_locations" (B, Q, 2).
            targets: per image "labels" (G,), "masks" (G, H, W).

        Returns:
            per image (query indices, target indices), int64 on the CPU.
        """
        pred_logits, pred_masks = outputs["pred_logits"], outputs["pred_masks"]
        locations = outputs.get("query_locations")
        indices, num_bad = [], 0
        with torch.autocast(device_type=pred_masks.device.type, enabled=False):
            for b, target in enumerate(targets):
                labels, masks = target["labels"], target["masks"].to(pred_masks.device)
                if labels.numel() == 0:
                    empty = torch.empty(0, dtype=torch.int64)
                    indices.append((empty, empty.clone()))
                    continue
                cost = self.cost_matrix(
                    pred_logits[b], pred_masks[b], labels, masks,
                    self.sample_points(pred_masks.device),
                )  # (Q, G)
                if locations is not None and self.cost_location:
                    cost = cost + self.cost_location * location_cost(locations[b], masks)
                assignment, bad = _solve(cost)
                indices.append(assignment)
                num_bad += bad
        _warn_non_finite(num_bad)
        return indices

    @torch.no_grad()
    def match_proposals(self, class_logits: torch.Tensor, targets: list[dict]) -> Indices:
        """Pixel-level assignment of the instance-activation head: one E4 pixel per object.

        ``C[pixel, gt] = cost_class * (-p[pixel, class_gt]) + cost_location * (-inside)``,
        inside = the ground-truth mask average-pooled to the E4 grid is > 0 there.

        Args:
            class_logits: (B, K+1, h, w).
            targets: per image "labels" (G,), "masks" (G, H, W).

        Returns:
            per image (flat pixel indices, target indices), int64 on the CPU.
        """
        size = class_logits.shape[-2:]
        indices, num_bad = [], 0
        with torch.autocast(device_type=class_logits.device.type, enabled=False):
            for b, target in enumerate(targets):
                labels = target["labels"]
                if labels.numel() == 0:
                    empty = torch.empty(0, dtype=torch.int64)
                    indices.append((empty, empty.clone()))
                    continue
                probs = class_logits[b].float().flatten(1).transpose(0, 1).softmax(-1)  # (hw,K+1)
                masks = target["masks"].to(probs)  # (G, H, W)
                inside = F.adaptive_avg_pool2d(masks[None], size)[0] > 0  # (G, h, w)
                cost = (
                    self.cost_class * -probs[:, labels.to(probs.device)]
                    + self.cost_location * -inside.flatten(1).transpose(0, 1).float()
                )  # (hw, G)
                assignment, bad = _solve(cost)
                indices.append(assignment)
                num_bad += bad
        _warn_non_finite(num_bad)
        return indices

    def extra_repr(self) -> str:
        return super().extra_repr() + f", cost_location={self.cost_location}"


def _warn_non_finite(num_bad: int) -> None:
    if num_bad:
        logger.warning(
            "FastInstMatcher: %d non-finite matching costs (NaN/inf) replaced by a large finite "
            "value; the model may be diverging.", num_bad,
        )


class FastInstCriterion(SetCriterion):
    """The shared set criterion plus FastInst's proposal loss and reused assignments.

    An output dict carrying "pred_matching_indices" (not None) is supervised with that
    assignment instead of being matched again (the GT-mask-guided predictions, and the last
    layer, whose matching the decoder already computed). The matcher must be a
    :class:`FastInstMatcher`.

    Losses: those of :class:`SetCriterion` (``loss_ce``, ``loss_mask``, ``loss_dice`` and their
    ``_i`` aux versions) and ``loss_proposal``: cross-entropy over every E4 pixel of the
    instance-activation head, the matched pixel of each object taking its class, all others
    background (a plain mean, no class weights).
    """

    def loss_proposals(
        self, class_logits: torch.Tensor, targets: list[dict], indices: Indices
    ) -> dict[str, torch.Tensor]:
        """class_logits (B, K+1, h, w); indices from :meth:`FastInstMatcher.match_proposals`."""
        logits = class_logits.float().flatten(2)  # (B, K+1, h*w)
        target_classes = torch.full(
            (logits.shape[0], logits.shape[2]), self.num_classes, dtype=torch.int64,
            device=logits.device,
        )  # (B, h*w)
        for b, (pixels, tgt) in enumerate(indices):
            labels = targets[b]["labels"].to(logits.device)
            target_classes[b, pixels.to(logits.device)] = labels[tgt.to(logits.device)]
        return {"loss_proposal": F.cross_entropy(logits, target_classes)}

    def _indices(self, outputs: dict, targets: list[dict]) -> Indices:
        given = outputs.get("pred_matching_indices")
        return list(given) if given is not None else self.matcher(outputs, targets)

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, torch.Tensor]:
        """
        Args:
            outputs: the decoder's dict ("pred_logits", "pred_masks", "query_locations",
                optionally "pred_matching_indices", "aux_outputs", "proposal_cls_logits").
            targets: per image "labels" (G,), "masks" (G, H, W).

        Returns:
            unweighted losses.
        """
        num_masks = self.get_num_masks(targets, outputs["pred_logits"].device)
        main = {k: v for k, v in outputs.items() if k != "aux_outputs"}
        losses = self.get_losses_for_indices(main, targets, self._indices(main, targets),
                                             num_masks)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            aux_losses = self.get_losses_for_indices(aux, targets, self._indices(aux, targets),
                                                     num_masks)
            losses.update({f"{k}_{i}": v for k, v in aux_losses.items()})
        class_logits = outputs.get("proposal_cls_logits")
        if class_logits is not None:
            proposal_indices = self.matcher.match_proposals(class_logits, targets)
            losses.update(self.loss_proposals(class_logits, targets, proposal_indices))
        return losses
