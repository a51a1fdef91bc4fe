"""MP-Former (Zhang et al., CVPR 2023): mask-piloted training of Mask2Former.

A training-only variant of Mask2Former's decoder and criterion, plugged in through the decoder's
variant interface (``mask2former.models.mask2former.variant``):

- ``piloting.py``: the MP queries, their attention masks (:class:`MaskPiloting`);
- ``loss.py``: their loss on the shared criterion (:class:`MaskPilotingLoss`);
- ``checkpoint.py``: checkpoint-key rules (the released code's names, plain Mask2Former);
- ``config.py``: the ``MODEL.MP_FORMER`` keys;
- ``build.py``: the builder that reads those keys and wires the piloting and its loss.
"""

from . import checkpoint  # noqa: F401  (registers the checkpoint-key rules)
from .build import build_mp_former
from .config import add_mp_former_config
from .loss import MaskPilotingLoss, mp_loss_names
from .piloting import MaskPiloting, PilotPlan, area_pool_allowed

__all__ = [
    "MaskPiloting",
    "MaskPilotingLoss",
    "PilotPlan",
    "add_mp_former_config",
    "area_pool_allowed",
    "build_mp_former",
    "mp_loss_names",
]
