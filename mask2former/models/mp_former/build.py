"""The one builder of MP-Former: reads ``MODEL.MP_FORMER.*`` and wires the decoder's piloting
hooks and their loss together."""

from ..mask2former.variant import DECODER_VARIANT_REGISTRY
from .loss import LOSS_SUFFIX, MaskPilotingLoss, mp_loss_names
from .piloting import MaskPiloting

__all__ = ["build_mp_former"]


@DECODER_VARIANT_REGISTRY.register()
def build_mp_former(cfg) -> MaskPiloting | None:
    """MP-Former's piloting (with its loss) for the decoder of ``cfg``, or None when
    ``MODEL.MP_FORMER.ENABLED`` is off.

    The MP losses take the matching losses' weights (``MODEL.MASK_FORMER.*_WEIGHT``), at every
    prediction point that the matching queries are supervised at.
    """
    mp, mf = cfg.MODEL.MP_FORMER, cfg.MODEL.MASK_FORMER
    if not mp.ENABLED:
        return None
    base_weights = {
        "loss_ce": mf.CLASS_WEIGHT,
        "loss_mask": mf.MASK_WEIGHT,
        "loss_dice": mf.DICE_WEIGHT,
    }
    # DEC_LAYERS counts the prediction before the first layer: DEC_LAYERS - 1 aux points.
    num_aux = mf.DEC_LAYERS - 1 if mf.DEEP_SUPERVISION else 0
    names = mp_loss_names(list(base_weights), num_aux, mp.CLASS_LOSS)
    loss = MaskPilotingLoss(
        weight_dict={k: base_weights[k.split(LOSS_SUFFIX)[0]] for k in names},
        class_loss=mp.CLASS_LOSS,
    )
    return MaskPiloting(
        num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        hidden_dim=mf.HIDDEN_DIM,
        num_heads=mf.NHEADS,
        num_groups=mp.NUM_GROUPS,
        mask_noise_ratio=mp.MASK_NOISE_RATIO,
        per_head_noise=mp.PER_HEAD_NOISE,
        label_noise_ratio=mp.LABEL_NOISE_RATIO,
        pilot_all_layers=mp.PILOT_ALL_LAYERS,
        loss=loss,
    )
