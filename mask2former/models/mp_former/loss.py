"""MP-Former's loss of the mask-piloted queries, on the shared set criterion.

Each MP query is supervised against the ground truth that piloted it (fixed assignment: slot
``g * M + j`` <-> target j, no Hungarian matching) with the matching losses, under the key
suffix ``_mp`` (``loss_ce_mp``, ``loss_mask_mp_0``, ...).
"""

import torch
from torch import nn

from ..mask2former.variant import VariantLoss

__all__ = ["LOSS_SUFFIX", "MaskPilotingLoss", "mp_loss_names"]

LOSS_SUFFIX = "_mp"


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


class MaskPilotingLoss(VariantLoss):
    """Losses of the MP queries with the fixed assignment slot g*M + j <-> target j.

    Reuses :meth:`SetCriterion.get_losses_for_indices`: class loss over all P slots (padding
    slots target "no object"; real slots the true class, also when the input label was
    flipped), mask losses on real slots, normalised by N * G (N: the criterion's GT count).

    Args:
        weight_dict: MP loss name (:func:`mp_loss_names`) -> weight; iterations without MP
            queries emit each as a zero connected to the variant's weights.
        class_loss: include the MP class loss.
    """

    output_key = "mp_outputs"

    def __init__(self, *, weight_dict: dict[str, float], class_loss: bool = True):
        super().__init__(weight_dict=weight_dict)
        self.class_loss = class_loss

    @property
    def loss_names(self) -> list[str]:
        return list(self.weight_dict)

    def __call__(
        self, criterion: nn.Module, outputs: dict, targets: list[dict]
    ) -> dict[str, torch.Tensor]:
        """
        Args:
            criterion: the :class:`SetCriterion` of the matching queries.
            outputs: the decoder's "mp_outputs": "pred_logits" (B, P, K+1), "pred_masks"
                (B, P, H/4, W/4), "aux_outputs", "indices", "num_groups"; or the variant's
                ``empty_outputs()`` ("skipped", "zero").
            targets: per image "labels" (n_b,) and "masks" (n_b, H, W).

        Returns:
            unweighted losses keyed by :attr:`loss_names`.
        """
        skipped = outputs.get("skipped", False)
        device = (outputs["zero"] if skipped else outputs["pred_masks"]).device
        # Called on every process whatever its batch, so that the all-reduce stays in step.
        num_masks = criterion.get_num_masks(targets, device)
        if skipped:
            return {k: outputs["zero"].clone() for k in self.loss_names}

        indices = outputs["indices"]
        num_masks = num_masks * outputs["num_groups"]
        points = [outputs, *outputs.get("aux_outputs", [])]
        losses = {}
        for i, out in enumerate(points):
            suffix = LOSS_SUFFIX if i == 0 else f"{LOSS_SUFFIX}_{i - 1}"
            if "loss_mask" + suffix not in self.weight_dict:
                continue  # e.g. aux points without deep supervision
            point_losses = criterion.get_losses_for_indices(out, targets, indices, num_masks)
            losses.update({k + suffix: v for k, v in point_losses.items()
                           if self.class_loss or k != "loss_ce"})
        return losses

    def __repr__(self) -> str:
        return f"MaskPilotingLoss(class_loss={self.class_loss}, num_losses={len(self.weight_dict)})"
