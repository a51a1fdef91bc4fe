"""FastInst head: the pixel decoder (PPM-FPN) followed by the dual-path transformer decoder."""

from __future__ import annotations

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from ..mask2former.pixel_decoder.fpn import build_pixel_decoder
from ..mask2former.transformer_decoder.mask2former_transformer_decoder import (
    TRANSFORMER_DECODER_REGISTRY,
)
from .decoder import Matcher

__all__ = ["FastInstHead"]


@SEM_SEG_HEADS_REGISTRY.register()
class FastInstHead(nn.Module):
    """Runs the pixel decoder, then the transformer decoder on its multi-scale features.

    Parameter names are official: ``pixel_decoder.*`` and ``predictor.*``.

    Args:
        input_shape: the backbone levels read (kept for the Detectron2 head interface).
        num_classes: K.
        pixel_decoder: a pixel decoder with ``forward_features`` (mask2former's contract).
        transformer_predictor: the transformer decoder (e.g. :class:`FastInstDecoder`).
    """

    @configurable
    def __init__(
        self,
        input_shape: dict[str, ShapeSpec],
        *,
        num_classes: int,
        pixel_decoder: nn.Module,
        transformer_predictor: nn.Module,
    ):
        super().__init__()
        self.in_features = [k for k, _ in sorted(input_shape.items(), key=lambda kv: kv[1].stride)]
        self.num_classes = num_classes
        self.pixel_decoder = pixel_decoder
        self.predictor = transformer_predictor

    @classmethod
    def from_config(cls, cfg, input_shape: dict[str, ShapeSpec]) -> dict:
        name = cfg.MODEL.FASTINST.TRANSFORMER_DECODER_NAME
        predictor = TRANSFORMER_DECODER_REGISTRY.get(name)(cfg, cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM)
        return {
            "input_shape": {
                k: v for k, v in input_shape.items() if k in cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES
            },
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "pixel_decoder": build_pixel_decoder(cfg, input_shape),
            "transformer_predictor": predictor,
        }

    def forward(
        self,
        features: dict[str, torch.Tensor],
        targets: list[dict] | None = None,
        matcher: Matcher | None = None,
    ) -> dict:
        """Backbone features by name -> the decoder's output dict (see
        :meth:`FastInstDecoder.forward`); ``targets`` and ``matcher`` in training only."""
        _, _, multi_scale_features = self.pixel_decoder.forward_features(features)
        return self.predictor(multi_scale_features, targets=targets, matcher=matcher)
