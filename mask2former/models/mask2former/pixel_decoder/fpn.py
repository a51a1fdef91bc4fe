"""Plain FPN pixel decoder and the pixel-decoder builder.

A pixel decoder is any module in Detectron2's ``SEM_SEG_HEADS_REGISTRY`` with a
``forward_features(features)`` method returning

- ``mask_features``: (B, MASK_DIM, H/4, W/4), the per-pixel embeddings the mask logits are
  computed from;
- ``transformer_encoder_features``: (B, CONVS_DIM, H/32, W/32) or None;
- ``multi_scale_features``: the 3 lowest-resolution decoder maps (B, CONVS_DIM, ., .), lowest
  resolution first (e.g. [1/32, 1/16, 1/8]).
"""

import logging
from functools import partial

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

logger = logging.getLogger(__name__)

# Number of decoder maps handed to the transformer decoder (always 3 scales in Mask2Former).
NUM_MULTI_SCALE_FEATURES = 3


def build_pixel_decoder(cfg, input_shape: dict[str, ShapeSpec]) -> nn.Module:
    """Build the pixel decoder named by ``cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME``."""
    name = cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME
    model = SEM_SEG_HEADS_REGISTRY.get(name)(cfg, input_shape)
    if not callable(getattr(model, "forward_features", None)):
        raise ValueError(
            f"Pixel decoder {name!r} has no forward_features(features) method; only "
            "SEM_SEG_HEADS that implement it (returning mask features, transformer encoder "
            "features and multi-scale features) can be used as pixel decoders."
        )
    return model


def make_lateral_conv(in_channels: int, conv_dim: int, norm: str) -> Conv2d:
    """1x1 lateral conv + norm of an FPN level (bias only without norm), c2_xavier_fill init."""
    conv = Conv2d(
        in_channels, conv_dim, kernel_size=1, bias=norm == "", norm=get_norm(norm, conv_dim)
    )
    weight_init.c2_xavier_fill(conv)
    return conv


def make_output_conv(in_channels: int, conv_dim: int, norm: str) -> Conv2d:
    """3x3 output conv + norm + ReLU of an FPN level (bias only without norm). The ReLU is in
    place: neither the conv's nor the norm's backward reads their output, and at 1/4 scale a
    fresh (B, 256, H/4, W/4) tensor is 62 MB per image at 800x1216."""
    conv = Conv2d(
        in_channels,
        conv_dim,
        kernel_size=3,
        padding=1,
        bias=norm == "",
        norm=get_norm(norm, conv_dim),
        activation=partial(F.relu, inplace=True),
    )
    weight_init.c2_xavier_fill(conv)
    return conv


@SEM_SEG_HEADS_REGISTRY.register()
class BasePixelDecoder(nn.Module):
    """Top-down FPN over all input levels (nearest upsampling).

    Parameter names follow the official model: level ``i`` (1-based, highest resolution first)
    has a lateral conv ``adapter_i`` (absent on the lowest-resolution level) and an output conv
    ``layer_i``; ``mask_features`` is a 3x3 conv with bias.

    Args:
        input_shape: backbone features the decoder reads (channels and stride).
        conv_dim: channels of the FPN maps.
        mask_dim: channels of the mask features.
        norm: Detectron2 norm name of the FPN convs ("" for none).
    """

    @configurable
    def __init__(
        self, input_shape: dict[str, ShapeSpec], *, conv_dim: int, mask_dim: int, norm: str = ""
    ):
        super().__init__()
        shapes = sorted(input_shape.items(), key=lambda kv: kv[1].stride)
        self.in_features = [name for name, _ in shapes]  # highest resolution first
        self.mask_dim = mask_dim

        lateral_convs: list[Conv2d | None] = []
        output_convs: list[Conv2d] = []
        for idx, (_, shape) in enumerate(shapes):
            if idx == len(shapes) - 1:
                lateral_conv = None
                output_conv = make_output_conv(shape.channels, conv_dim, norm)
            else:
                lateral_conv = make_lateral_conv(shape.channels, conv_dim, norm)
                output_conv = make_output_conv(conv_dim, conv_dim, norm)
                self.add_module(f"adapter_{idx + 1}", lateral_conv)
            self.add_module(f"layer_{idx + 1}", output_conv)
            lateral_convs.append(lateral_conv)
            output_convs.append(output_conv)
        # Plain lists (the modules are registered above): top-down order, lowest resolution first.
        self.lateral_convs = lateral_convs[::-1]
        self.output_convs = output_convs[::-1]

        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=3, padding=1)
        weight_init.c2_xavier_fill(self.mask_features)

    @classmethod
    def from_config(cls, cfg, input_shape: dict[str, ShapeSpec]):
        return {
            "input_shape": {
                k: v for k, v in input_shape.items() if k in cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES
            },
            "conv_dim": cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM,
            "mask_dim": cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
            "norm": cfg.MODEL.SEM_SEG_HEAD.NORM,
        }

    def forward_features(
        self, features: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, None, list[torch.Tensor]]:
        """
        Args:
            features: backbone maps by name, e.g. res2..res5, each (B, C_l, H_l, W_l).

        Returns:
            mask features (B, MASK_DIM, H_0, W_0) at the highest input resolution, None, and the
            first 3 top-down maps (B, CONVS_DIM, H_l, W_l), lowest resolution first.
        """
        multi_scale_features = []
        y = None
        for f, lateral_conv, output_conv in zip(
            self.in_features[::-1], self.lateral_convs, self.output_convs
        ):
            x = features[f]
            if lateral_conv is None:
                y = output_conv(x)  # (B, CONVS_DIM, H_l, W_l)
            else:
                cur_fpn = lateral_conv(x)  # (B, CONVS_DIM, H_l, W_l)
                y = output_conv(cur_fpn + F.interpolate(y, size=cur_fpn.shape[-2:], mode="nearest"))
            if len(multi_scale_features) < NUM_MULTI_SCALE_FEATURES:
                multi_scale_features.append(y)
        return self.mask_features(y), None, multi_scale_features

    def forward(self, features: dict[str, torch.Tensor]):
        logger.warning("A pixel decoder is meant to be called through forward_features().")
        return self.forward_features(features)
