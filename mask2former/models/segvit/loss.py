"""SegViT's loss (reference ``ATMLoss``): query c is always paired with class c.

Built on the shared :class:`~mask2former.modeling.criterion.SetCriterion`: a fixed class-index
matcher replaces the Hungarian one, and the masks are supervised at full label resolution with
a sigmoid focal loss and the shared dice loss (no point sampling).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ...modeling.criterion import SetCriterion, dice_loss

__all__ = ["ClassIndexMatcher", "ATMCriterion", "sigmoid_focal_loss", "semantic_targets"]

# Logit given to excluded (ignore) pixels in the dice loss: sigmoid is exactly 0 in float32.
_EXCLUDED_LOGIT = -1e4


def semantic_targets(sem_seg: torch.Tensor, ignore_value: int) -> list[dict]:
    """Per image, the targets of the criterion from a (B, H, W) label map.

    Returns per image "labels" (G,) int64, the classes present (ignore excluded, ascending),
    "masks" (G, H, W) float, ``label == c`` (ignore pixels are 0 in every mask), and "valid"
    (H, W) bool, the non-ignore pixels.
    """
    targets = []
    for label in sem_seg:
        classes = torch.unique(label)
        classes = classes[classes != ignore_value].to(torch.int64)  # (G,)
        masks = (label[None] == classes[:, None, None]).float()  # (G, H, W)
        targets.append({"labels": classes, "masks": masks, "valid": label != ignore_value})
    return targets


def sigmoid_focal_loss(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    num_masks: float,
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sigmoid focal loss, averaged over pixels, summed over masks / num_masks.

    Args:
        inputs: (N, P) logits.
        targets: (N, P) in [0, 1].
        alpha: weight of the positives (negatives: 1 - alpha); < 0: no weighting.
        gamma: focusing exponent.
        valid: (N, P) bool, pixels that count (None: all); the mean is over them.
    """
    prob = inputs.sigmoid()  # (N, P)
    ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")  # (N, P)
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma  # (N, P)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    if valid is None:
        return loss.mean(1).sum() / num_masks
    valid = valid.to(loss.dtype)
    per_mask = (loss * valid).sum(1) / valid.sum(1).clamp(min=1)  # (N,)
    return per_mask.sum() / num_masks


class ClassIndexMatcher(nn.Module):
    """The fixed assignment of SegViT: the query of class c predicts the target of class c."""

    @torch.no_grad()
    def forward(
        self, outputs: dict, targets: list[dict]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per image (query indices = the target labels, target indices 0..G-1)."""
        return [
            (t["labels"].to(torch.int64), torch.arange(len(t["labels"]), device=t["labels"].device))
            for t in targets
        ]


class ATMCriterion(SetCriterion):
    """SetCriterion with the class-index assignment, focal + dice mask losses on the full label
    grid (predictions upsampled bilinearly), and an option to exclude ignore pixels.

    Losses: "loss_ce" (cross-entropy over K+1, "no object" weighted ``eos_coef``, for every
    query: a class absent from the image has target "no object"), "loss_mask" (focal),
    "loss_dice"; with suffix ``_i`` for aux output i. Targets: see :func:`semantic_targets`.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        weight_dict: dict[str, float],
        eos_coef: float,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        exclude_ignore: bool = False,
    ):
        """
        Args:
            num_classes: K.
            weight_dict: loss name -> weight (applied by the caller).
            eos_coef: class weight of "no object".
            focal_alpha, focal_gamma: focal loss parameters.
            exclude_ignore: leave ignore pixels out of the mask losses (False: the reference,
                where they are negatives of every class).
        """
        super().__init__(
            num_classes=num_classes, matcher=ClassIndexMatcher(), weight_dict=weight_dict,
            eos_coef=eos_coef, losses=["labels", "masks"], num_points=0, oversample_ratio=1.0,
            importance_sample_ratio=0.0,
        )
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.exclude_ignore = exclude_ignore

    def loss_masks(self, outputs: dict, targets: list[dict], indices, num_masks: float) -> dict:
        """Focal and dice losses of each target class mask against its class's query."""
        pred_masks = outputs["pred_masks"].float()  # (B, Q, h, w), losses in float32
        batch_idx = torch.cat(
            [torch.full_like(src, b) for b, (src, _) in enumerate(indices)]
        ).to(pred_masks.device)  # (N,)
        src_idx = torch.cat([src for src, _ in indices]).to(pred_masks.device)  # (N,)
        if src_idx.numel() == 0:
            zero = pred_masks.sum() * 0.0  # keeps every parameter in the graph
            return {"loss_mask": zero, "loss_dice": zero.clone()}
        target_masks = torch.cat([t["masks"][j] for t, (_, j) in zip(targets, indices)])
        target_masks = target_masks.to(pred_masks)  # (N, H, W)
        src = F.interpolate(
            pred_masks[batch_idx, src_idx][:, None], size=target_masks.shape[-2:],
            mode="bilinear", align_corners=False,
        )[:, 0].flatten(1)  # (N, H*W)
        tgt = target_masks.flatten(1)  # (N, H*W)
        valid = None
        if self.exclude_ignore:
            valid = torch.cat(
                [t["valid"][None].expand(len(j), -1, -1) for t, (_, j) in zip(targets, indices)]
            ).flatten(1).to(src.device)  # (N, H*W)
        loss_mask = sigmoid_focal_loss(
            src, tgt, num_masks, alpha=self.focal_alpha, gamma=self.focal_gamma, valid=valid
        )
        dice_src = src if valid is None else src.masked_fill(~valid, _EXCLUDED_LOGIT)
        return {"loss_mask": loss_mask, "loss_dice": dice_loss(dice_src, tgt, num_masks)}

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, eos_coef={self.eos_coef}, "
            f"focal_alpha={self.focal_alpha}, focal_gamma={self.focal_gamma}, "
            f"exclude_ignore={self.exclude_ignore}"
        )
