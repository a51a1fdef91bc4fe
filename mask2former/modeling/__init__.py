from .backbone.swin import D2SwinTransformer  # noqa: F401
from .meta_arch.mask_former_head import MaskFormerHead  # noqa: F401
from .pixel_decoder.fpn import BasePixelDecoder, build_pixel_decoder  # noqa: F401
from .pixel_decoder.msdeformattn import MSDeformAttnPixelDecoder  # noqa: F401
from .transformer_decoder.mask2former_transformer_decoder import (  # noqa: F401
    TRANSFORMER_DECODER_REGISTRY,
    MultiScaleMaskedTransformerDecoder,
    build_transformer_decoder,
)
