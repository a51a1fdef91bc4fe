"""Mask2Former and its successors as Detectron2 components.

Importing the package registers every component (backbones, pixel decoders, transformer
decoders, heads, meta-architectures of every model family) and the built-in datasets.
See the README's "Architecture" section for the map of the package.
"""

from . import (
    data,  # noqa: F401  (registers datasets and mappers)
    modeling,  # noqa: F401  (registers the shared backbones)
    models,  # noqa: F401  (registers every model family's components)
)
from .config import add_maskformer2_config  # noqa: F401
from .models.fastinst.config import add_fastinst_config  # noqa: F401
from .models.segvit.config import add_segvit_config  # noqa: F401
from .models.transfiner.config import add_transfiner_config  # noqa: F401
