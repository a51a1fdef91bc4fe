"""Mask2Former and its successors as Detectron2 components.

Importing the package registers every component (backbones, pixel decoders, transformer
decoders, heads, meta-architectures) and the built-in datasets.
"""

from . import data  # noqa: F401  (registers datasets and mappers)
from . import modeling  # noqa: F401  (registers model components)
from .config import add_maskformer2_config  # noqa: F401
