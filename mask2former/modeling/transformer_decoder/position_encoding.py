"""The transformer decoder uses the pixel decoder's sine positional encoding."""

from ..pixel_decoder.position_encoding import PositionEmbeddingSine

__all__ = ["PositionEmbeddingSine"]
