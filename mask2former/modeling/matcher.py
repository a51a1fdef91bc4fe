"""Hungarian matching between predicted and ground-truth masks on sampled points."""

import logging

import numpy as np
import torch
from detectron2.projects.point_rend.point_features import point_sample
from scipy.optimize import linear_sum_assignment
from torch import nn
from torch.nn import functional as F

__all__ = ["HungarianMatcher", "batch_sigmoid_ce_cost", "batch_dice_cost"]

logger = logging.getLogger(__name__)


def batch_dice_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pairwise dice cost ``1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1)``.

    Args:
        inputs: (N, P) mask logits of N predictions at P points.
        targets: (M, P) binary (or soft) targets of M ground truths at the same points.

    Returns:
        (N, M) costs.
    """
    inputs = inputs.sigmoid()  # (N, P)
    numerator = 2 * torch.einsum("np,mp->nm", inputs, targets)  # (N, M)
    denominator = inputs.sum(-1)[:, None] + targets.sum(-1)[None, :]  # (N, M)
    return 1 - (numerator + 1) / (denominator + 1)


def batch_sigmoid_ce_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pairwise binary cross-entropy with logits, averaged over points.

    ``BCE(x, t) = softplus(x) - x t``, so all pairs come from one row sum and one matrix product
    instead of an (N, M, P) tensor.

    Args:
        inputs: (N, P) mask logits.
        targets: (M, P) targets in [0, 1].

    Returns:
        (N, M) costs.
    """
    num_points = inputs.shape[1]
    loss = F.softplus(inputs).sum(-1)[:, None] - inputs @ targets.T  # (N, M)
    return loss / num_points


class HungarianMatcher(nn.Module):
    """One-to-one assignment of predictions to ground truths minimising a weighted cost.

    ``C = cost_class * (-p[gt label]) + cost_mask * BCE + cost_dice * dice``, the mask terms
    computed on ``num_points`` uniform random points shared by all predictions and ground truths
    of an image. Runs without gradients and in fp32. Non-finite costs (a diverging model) are
    replaced by a large finite value so that the assignment still succeeds, with one warning per
    call giving their number.
    """

    def __init__(
        self,
        *,
        cost_class: float = 1.0,
        cost_mask: float = 1.0,
        cost_dice: float = 1.0,
        num_points: int,
    ):
        """
        Args:
            cost_class: weight of the classification cost.
            cost_mask: weight of the point-averaged sigmoid BCE cost.
            cost_dice: weight of the dice cost.
            num_points: number of sampled points per image.
        """
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("HungarianMatcher: all costs are 0")
        if num_points <= 0:
            raise ValueError(f"HungarianMatcher: num_points must be positive, got {num_points}")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    def cost_matrix(
        self,
        pred_logits: torch.Tensor,
        pred_masks: torch.Tensor,
        tgt_labels: torch.Tensor,
        tgt_masks: torch.Tensor,
        point_coords: torch.Tensor,
    ) -> torch.Tensor:
        """Cost matrix of one image for given sampling points.

        Args:
            pred_logits: (Q, K+1) class logits.
            pred_masks: (Q, h, w) mask logits.
            tgt_labels: (G,) int64 labels.
            tgt_masks: (G, H, W) binary masks (any dtype).
            point_coords: (P, 2) normalised (x, y) coordinates in [0, 1].

        Returns:
            (Q, G) fp32 costs.
        """
        out_prob = pred_logits.float().softmax(-1)  # (Q, K+1)
        cost_class = -out_prob[:, tgt_labels]  # (Q, G)

        # The masks are the channels of one image, so one grid is sampled for all of them.
        coords = point_coords.float()[None]  # (1, P, 2)
        out_mask = point_sample(pred_masks.float()[None], coords, align_corners=False)[0]  # (Q, P)
        tgt_mask = point_sample(tgt_masks.float()[None], coords, align_corners=False)[0]  # (G, P)
        cost_mask = batch_sigmoid_ce_cost(out_mask, tgt_mask)  # (Q, G)
        cost_dice = batch_dice_cost(out_mask, tgt_mask)  # (Q, G)
        return (
            self.cost_mask * cost_mask + self.cost_class * cost_class + self.cost_dice * cost_dice
        )

    def sample_points(self, device: torch.device) -> torch.Tensor:
        """(num_points, 2) uniform random (x, y) in [0, 1], shared by one image's masks."""
        return torch.rand(self.num_points, 2, device=device)

    @torch.no_grad()
    def forward(
        self, outputs: dict, targets: list[dict]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """
        Args:
            outputs: "pred_logits" (B, Q, K+1) and "pred_masks" (B, Q, h, w).
            targets: per image, "labels" (G,) int64 and "masks" (G, H, W).

        Returns:
            per image, (index_i, index_j) int64 CPU tensors of equal length min(Q, G): the
            i-th matched prediction ``index_i[n]`` goes with ground truth ``index_j[n]``.
        """
        pred_logits = outputs["pred_logits"]
        pred_masks = outputs["pred_masks"]
        indices = []
        num_non_finite = 0
        with torch.autocast(device_type=pred_masks.device.type, enabled=False):
            for b, target in enumerate(targets):
                labels, masks = target["labels"], target["masks"]
                if labels.numel() == 0:
                    empty = torch.empty(0, dtype=torch.int64)
                    indices.append((empty, empty.clone()))
                    continue
                point_coords = self.sample_points(pred_masks.device)  # (P, 2)
                cost = self.cost_matrix(
                    pred_logits[b], pred_masks[b], labels, masks.to(pred_masks.device),
                    point_coords,
                ).cpu()  # (Q, G)
                cost, n_bad = _make_finite(cost)
                num_non_finite += n_bad
                i, j = linear_sum_assignment(cost.numpy())
                indices.append(
                    (torch.as_tensor(i, dtype=torch.int64), torch.as_tensor(j, dtype=torch.int64))
                )
        if num_non_finite:
            logger.warning(
                "HungarianMatcher: %d non-finite matching costs (NaN/inf) replaced by a large "
                "finite value; the model may be diverging.",
                num_non_finite,
            )
        return indices

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_mask={self.cost_mask}, "
            f"cost_dice={self.cost_dice}, num_points={self.num_points}"
        )


def _make_finite(cost: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Replace NaN/inf entries by a value above every finite cost; returns the count too."""
    finite = torch.isfinite(cost)
    num_bad = int((~finite).sum())
    if num_bad == 0:
        return cost, 0
    largest = float(cost[finite].abs().max()) if bool(finite.any()) else 0.0
    # Above any finite entry (so a non-finite pair is only chosen when unavoidable), and small
    # enough that the solver's float64 sums stay exact for the finite entries.
    big = float(np.float32(2 * largest + 1e4))
    return torch.where(finite, cost, torch.full_like(cost, big)), num_bad
