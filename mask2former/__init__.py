"""Mask2Former and its successors as Detectron2 components.

Importing the package registers every component (backbones, pixel decoders, transformer
decoders, heads, meta-architectures) and the built-in datasets.
"""

from . import (
    data,  # noqa: F401  (registers datasets and mappers)
    modeling,  # noqa: F401  (registers model components)
)
from .config import add_maskformer2_config  # noqa: F401
from .maskformer_model import MaskFormer  # noqa: F401  (registers the meta-architecture)
