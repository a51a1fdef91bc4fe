"""SegViT (Zhang et al., NeurIPS 2022): the attention-to-mask decoder on a plain ViT, with the
Shrunk variant (query-based down- and up-sampling).

Importing this registers the backbone ``D2PlainViT``, the heads ``ATMHead`` and
``ShrunkATMHead``, the meta-architecture ``SegViT`` and the PASCAL-Context-59 datasets.
"""

from . import datasets  # noqa: F401  (registration side effects)
from .backbone import D2PlainViT  # noqa: F401
from .config import add_segvit_config  # noqa: F401
from .head import ATMHead, ShrunkATMHead  # noqa: F401
from .loss import ATMCriterion  # noqa: F401
from .segvit_model import SegViT  # noqa: F401
