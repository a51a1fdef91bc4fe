"""MP-Former's checkpoint-key rules, run by the Mask2Former decoder before it loads.

- The released MP-Former code keeps the label embedding at ``label_enc.weight`` of the
  predictor, and an earlier version of this package at ``piloting.label_enc.weight``: both move
  to ``variant.label_enc.weight`` when the model pilots.
- A model without piloting drops the label embedding (used in training only) with an info
  line, so an MP-trained checkpoint loads into plain Mask2Former for inference.
- A checkpoint with a label embedding but no ``query_embed.weight`` was trained without query
  positions (the released MP-Former recipe); a model with learned query positions warns that
  ``MODEL.MASK_FORMER.QUERY_POS "none"`` is needed to load it as trained.
"""

import logging

from torch import nn

from ..mask2former.variant import register_state_dict_adapter
from .piloting import MaskPiloting

__all__ = ["adapt_mp_former_keys"]

logger = logging.getLogger(__name__)

_KEY = "variant.label_enc.weight"
_OTHER_KEYS = ("label_enc.weight", "piloting.label_enc.weight")


@register_state_dict_adapter
def adapt_mp_former_keys(decoder: nn.Module, state_dict: dict, prefix: str) -> None:
    """Adapt the decoder's keys under ``prefix`` in place (see the module docstring)."""
    key = prefix + _KEY
    others = [prefix + k for k in _OTHER_KEYS if prefix + k in state_dict]
    if not others and key not in state_dict:
        return
    if isinstance(getattr(decoder, "variant", None), MaskPiloting):
        if key not in state_dict:
            state_dict[key] = state_dict.pop(others[0])
            logger.info(f"MP-Former checkpoint: loading {others[0]} as {key}.")
    else:
        dropped = [k for k in (key, *others) if state_dict.pop(k, None) is not None]
        logger.info(
            f"Dropped {dropped}: MP-Former's label embedding is used in training only "
            "(MODEL.MP_FORMER.ENABLED is off)."
        )
    embed_key = prefix + "query_embed.weight"
    if getattr(decoder, "query_embed", None) is not None and embed_key not in state_dict:
        logger.warning(
            f"The checkpoint has an MP-Former label embedding but no {embed_key}: it was "
            "trained without query positions; set MODEL.MASK_FORMER.QUERY_POS 'none' to load it."
        )
