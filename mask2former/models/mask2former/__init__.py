"""Mask2Former: backbone -> pixel decoder -> masked-attention transformer decoder.

Importing this registers the meta-architecture (``MaskFormer``), the head (``MaskFormerHead``),
the pixel decoders (``BasePixelDecoder``, ``MSDeformAttnPixelDecoder``) and the transformer
decoder (``MultiScaleMaskedTransformerDecoder``).
"""

from .mask_former_head import MaskFormerHead  # noqa: F401
from .maskformer_model import MaskFormer  # noqa: F401
from .pixel_decoder.fpn import BasePixelDecoder, build_pixel_decoder  # noqa: F401
from .pixel_decoder.msdeformattn import MSDeformAttnPixelDecoder  # noqa: F401
from .transformer_decoder.mask2former_transformer_decoder import (  # noqa: F401
    TRANSFORMER_DECODER_REGISTRY,
    MultiScaleMaskedTransformerDecoder,
    build_transformer_decoder,
)
