"""Set criterion of Mask2Former: Hungarian matching, then class and point-sampled mask losses."""

from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
from detectron2.projects.point_rend.point_features import (
    get_uncertain_point_coords_with_randomness,
    point_sample,
)
from detectron2.utils import comm
from torch import nn
from torch.nn import functional as F

__all__ = ["SetCriterion", "sigmoid_ce_loss", "dice_loss", "calculate_uncertainty"]

Indices = Sequence[tuple[torch.Tensor, torch.Tensor]]


def dice_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Dice loss ``1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1)``, summed over masks / num_masks.

    Args:
        inputs: (N, P) mask logits at P points.
        targets: (N, P) targets in [0, 1] at the same points.
        num_masks: normaliser (average number of ground-truth masks per process).
    """
    inputs = inputs.sigmoid().flatten(1)  # (N, P)
    numerator = 2 * (inputs * targets).sum(-1)  # (N,)
    denominator = inputs.sum(-1) + targets.sum(-1)  # (N,)
    loss = 1 - (numerator + 1) / (denominator + 1)  # (N,)
    return loss.sum() / num_masks


def sigmoid_ce_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Binary cross-entropy with logits, averaged over points, summed over masks / num_masks.

    Args:
        inputs: (N, P) mask logits.
        targets: (N, P) targets in [0, 1].
        num_masks: normaliser.
    """
    loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")  # (N, P)
    return loss.mean(1).sum() / num_masks


def calculate_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Uncertainty of mask logits for importance sampling: ``-|logit|`` (highest at 0).

    Args:
        logits: (N, 1, ...) logits of one class-agnostic mask per row.
    """
    return -torch.abs(logits)


class SetCriterion(nn.Module):
    """Loss of mask-classification models.

    ``forward`` matches predictions to ground truths (``matcher``) and calls
    :meth:`get_losses_for_indices`, once for the final prediction and once per entry of
    ``aux_outputs`` (suffix ``_i``). Callers that already know the assignment (e.g. MP-Former's
    piloted queries, supervised with a fixed one-to-one assignment) call
    :meth:`get_losses_for_indices` themselves with :meth:`get_num_masks`.

    Losses:
        "labels": ``loss_ce``, weighted cross-entropy over all queries; unmatched queries have
            target "no object" (class K) with weight ``eos_coef``.
        "masks": ``loss_mask`` (sigmoid BCE) and ``loss_dice`` on matched pairs only, at
            ``num_points`` points per mask chosen by PointRend importance sampling on the
            prediction's uncertainty.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        matcher: nn.Module,
        weight_dict: dict[str, float],
        eos_coef: float,
        losses: Sequence[str],
        num_points: int,
        oversample_ratio: float,
        importance_sample_ratio: float,
    ):
        """
        Args:
            num_classes: K, number of real classes ("no object" is class K).
            matcher: module computing per-image (index_i, index_j) assignments.
            weight_dict: loss name -> weight; applied by the caller, kept here for it.
            eos_coef: classification weight of the "no object" class.
            losses: subset of {"labels", "masks"}.
            num_points: points sampled per mask for the mask losses.
            oversample_ratio: candidates drawn per point before importance selection (>= 1).
            importance_sample_ratio: fraction of points taken from the most uncertain candidates.
        """
        super().__init__()
        unknown = set(losses) - set(self._loss_fns())
        if unknown:
            raise ValueError(f"SetCriterion: unknown losses {sorted(unknown)}")
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.eos_coef = eos_coef
        self.losses = list(losses)
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        empty_weight = torch.ones(num_classes + 1)  # (K+1,)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)

    def _loss_fns(self) -> dict[str, Callable[..., dict[str, torch.Tensor]]]:
        return {"labels": self.loss_labels, "masks": self.loss_masks}

    # ------------------------------------------------------------------ losses
    def loss_labels(
        self, outputs: dict, targets: list[dict], indices: Indices, num_masks: float
    ) -> dict[str, torch.Tensor]:
        """Weighted cross-entropy over all queries (``num_masks`` is unused: PyTorch's
        weighted mean)."""
        src_logits = outputs["pred_logits"].float()  # (B, Q, K+1)
        batch_idx, src_idx = _src_permutation_idx(indices)
        batch_idx = batch_idx.to(src_logits.device)
        src_idx = src_idx.to(src_logits.device)
        target_classes_o = torch.cat(
            [t["labels"][j.to(t["labels"].device)] for t, (_, j) in zip(targets, indices)]
        ).to(src_logits.device)  # (N,)
        target_classes = torch.full(
            src_logits.shape[:2], self.num_classes, dtype=torch.int64, device=src_logits.device
        )  # (B, Q)
        target_classes[batch_idx, src_idx] = target_classes_o
        loss_ce = F.cross_entropy(src_logits.transpose(1, 2), target_classes, self.empty_weight)
        return {"loss_ce": loss_ce}

    def loss_masks(
        self, outputs: dict, targets: list[dict], indices: Indices, num_masks: float
    ) -> dict[str, torch.Tensor]:
        """Point-sampled sigmoid BCE and dice losses of matched (prediction, target) pairs.

        Target masks of all images must share one size (the padded batch size).
        """
        pred_masks = outputs["pred_masks"]  # (B, Q, h, w)
        batch_idx, src_idx = _src_permutation_idx(indices)
        if batch_idx.numel() == 0:
            # No ground truth in the batch: zero losses still connected to the graph (so that
            # every parameter gets a gradient, as distributed training expects).
            zero = pred_masks.sum() * 0.0
            return {"loss_mask": zero, "loss_dice": zero.clone()}
        batch_idx = batch_idx.to(pred_masks.device)
        src_idx = src_idx.to(pred_masks.device)
        src_masks = pred_masks[batch_idx, src_idx][:, None]  # (N, 1, h, w)
        target_masks = torch.cat(
            [t["masks"][j.to(t["masks"].device)] for t, (_, j) in zip(targets, indices)]
        )  # (N, H, W)
        target_masks = target_masks.to(src_masks)[:, None]  # (N, 1, H, W)

        with torch.no_grad():
            # Both masks are sampled at the same normalised coordinates, so the 1/4-resolution
            # predictions and full-resolution targets need no resizing.
            point_coords = get_uncertain_point_coords_with_randomness(
                src_masks,
                calculate_uncertainty,
                self.num_points,
                self.oversample_ratio,
                self.importance_sample_ratio,
            )  # (N, P, 2)
            point_labels = point_sample(
                target_masks, point_coords, align_corners=False
            ).squeeze(1)  # (N, P)
        point_logits = point_sample(src_masks, point_coords, align_corners=False).squeeze(1)
        return {
            "loss_mask": sigmoid_ce_loss(point_logits, point_labels, num_masks),
            "loss_dice": dice_loss(point_logits, point_labels, num_masks),
        }

    # ------------------------------------------------------------------ composition
    def get_losses_for_indices(
        self, outputs: dict, targets: list[dict], indices: Indices, num_masks: float
    ) -> dict[str, torch.Tensor]:
        """Every loss in ``self.losses`` of one prediction set for a given assignment.

        Args:
            outputs: "pred_logits" (B, Q, K+1) and "pred_masks" (B, Q, h, w).
            targets: per image, "labels" (G,) int64 and "masks" (G, H, W).
            indices: per image, (prediction indices, target indices).
            num_masks: normaliser of the mask losses (see :meth:`get_num_masks`).
        """
        losses: dict[str, torch.Tensor] = {}
        loss_fns = self._loss_fns()
        for name in self.losses:
            losses.update(loss_fns[name](outputs, targets, indices, num_masks))
        return losses

    @staticmethod
    def get_num_masks(targets: list[dict], device: torch.device) -> float:
        """Average number of target masks per process (all-reduced), at least 1."""
        num_masks = sum(len(t["labels"]) for t in targets)
        num_masks = torch.as_tensor([num_masks], dtype=torch.float, device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(num_masks)
        return torch.clamp(num_masks / comm.get_world_size(), min=1).item()

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, torch.Tensor]:
        """
        Args:
            outputs: "pred_logits", "pred_masks" and optionally "aux_outputs" (a list of
                dicts with the same two keys, one per intermediate prediction).
            targets: per image, "labels" (G,) int64 and "masks" (G, H, W).

        Returns:
            unweighted losses: loss_ce, loss_mask, loss_dice and, per aux output i,
            loss_ce_i, loss_mask_i, loss_dice_i.
        """
        outputs_without_aux = {k: v for k, v in outputs.items() if k != "aux_outputs"}
        num_masks = self.get_num_masks(targets, outputs["pred_logits"].device)

        indices = self.matcher(outputs_without_aux, targets)
        losses = self.get_losses_for_indices(outputs_without_aux, targets, indices, num_masks)
        for i, aux_outputs in enumerate(outputs.get("aux_outputs", [])):
            indices = self.matcher(aux_outputs, targets)
            aux_losses = self.get_losses_for_indices(aux_outputs, targets, indices, num_masks)
            losses.update({f"{k}_{i}": v for k, v in aux_losses.items()})
        return losses

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, eos_coef={self.eos_coef}, losses={self.losses}, "
            f"num_points={self.num_points}, oversample_ratio={self.oversample_ratio}, "
            f"importance_sample_ratio={self.importance_sample_ratio}"
        )


def _src_permutation_idx(indices: Indices) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch index, prediction index) of every matched prediction, images concatenated."""
    batch_idx = torch.cat(
        [torch.full_like(src, i, dtype=torch.int64) for i, (src, _) in enumerate(indices)]
    )  # (N,)
    src_idx = torch.cat([src.to(torch.int64) for src, _ in indices])  # (N,)
    return batch_idx, src_idx
