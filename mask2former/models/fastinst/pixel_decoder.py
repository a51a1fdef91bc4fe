"""PPM-FPN: FastInst's pixel decoder (an FPN whose top level goes through pyramid pooling)."""

from __future__ import annotations

import logging

import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn
from torch.nn import functional as F

from ..mask2former.pixel_decoder.fpn import make_lateral_conv, make_output_conv

__all__ = ["PyramidPoolingModule", "PyramidPoolingModuleFPN"]

logger = logging.getLogger(__name__)


class PyramidPoolingModule(nn.Module):
    """PSPNet's pyramid pooling: pooled context at several grid sizes, fused with the input.

    Each branch average-pools to ``size`` x ``size``, applies a 1x1 conv (with bias) + ReLU and
    is resized back; the branches and the input are concatenated and fused by a 1x1 conv + ReLU
    to ``in_channels``.
    """

    def __init__(self, in_channels: int, channels: int, sizes: tuple[int, ...] = (1, 2, 3, 6)):
        super().__init__()
        # Index 0 (pool) and 1 (conv) of each stage are the official parameter names.
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(size), Conv2d(in_channels, channels, 1))
            for size in sizes
        )
        self.bottleneck = Conv2d(in_channels + len(sizes) * channels, in_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, C, h, w)."""
        size = x.shape[-2:]
        branches = [
            F.interpolate(F.relu(stage(x)), size=size, mode="bilinear", align_corners=False)
            for stage in self.stages
        ]  # each (B, channels, h, w)
        fused = torch.cat(branches + [x], dim=1)  # (B, C + n * channels, h, w)
        return F.relu(self.bottleneck(fused))


@SEM_SEG_HEADS_REGISTRY.register()
class PyramidPoolingModuleFPN(nn.Module):
    """Top-down FPN over the input levels with a pyramid pooling module on the top level.

    Level by level from the lowest resolution: lateral 1x1 conv (+ norm); the top level goes
    through :class:`PyramidPoolingModule` (``convs_dim // 4`` channels per branch), the others
    add the bilinearly upsampled previous output; then a 3x3 conv + norm + ReLU.

    ``forward_features`` follows the pixel-decoder contract
    (:func:`mask2former.models.mask2former.pixel_decoder.fpn.build_pixel_decoder`): there are no
    mask features and no encoder features (None, None), and the multi-scale features are the
    three outputs, lowest resolution first: [E5 (1/32), E4 (1/16), E3 (1/8)] for res3..res5.

    Parameter names are official: ``adapter_i`` / ``layer_i`` (lateral / output conv of the
    i-th input level, highest resolution first) and ``ppm``.

    Args:
        input_shape: the backbone levels read (3 of them).
        convs_dim: width of every output.
        mask_dim: unused (kept for the official constructor; masks come from the decoder).
        norm: Detectron2 norm name of the convs ("" for none: the convs get a bias).
    """

    @configurable
    def __init__(
        self,
        input_shape: dict[str, ShapeSpec],
        *,
        convs_dim: int,
        mask_dim: int,
        norm: str = "",
    ):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(
                "PyramidPoolingModuleFPN reads 3 backbone levels (MODEL.SEM_SEG_HEAD.IN_FEATURES,"
                f" e.g. res3, res4, res5), got {sorted(input_shape)}"
            )
        shapes = sorted(input_shape.items(), key=lambda kv: kv[1].stride)
        self.in_features = [name for name, _ in shapes]
        self.mask_dim = mask_dim
        for i, (_, shape) in enumerate(shapes):
            self.add_module(f"adapter_{i + 1}", make_lateral_conv(shape.channels, convs_dim, norm))
            self.add_module(f"layer_{i + 1}", make_output_conv(convs_dim, convs_dim, norm))
        self.ppm = PyramidPoolingModule(convs_dim, convs_dim // 4)

    @classmethod
    def from_config(cls, cfg, input_shape: dict[str, ShapeSpec]) -> dict:
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "convs_dim": head.CONVS_DIM,
            "mask_dim": head.MASK_DIM,
            "norm": head.NORM,
        }

    def forward_features(
        self, features: dict[str, torch.Tensor]
    ) -> tuple[None, None, list[torch.Tensor]]:
        """Backbone features -> (None, None, [E5, E4, E3]), each (B, convs_dim, h_l, w_l)."""
        outputs: list[torch.Tensor] = []
        y: torch.Tensor | None = None
        for i in reversed(range(len(self.in_features))):
            lateral = getattr(self, f"adapter_{i + 1}")(features[self.in_features[i]])
            if y is None:
                y = self.ppm(lateral)  # (B, C, h, w)
            else:
                y = lateral + F.interpolate(
                    y, size=lateral.shape[-2:], mode="bilinear", align_corners=False
                )  # (B, C, h, w)
            y = getattr(self, f"layer_{i + 1}")(y)
            outputs.append(y)
        return None, None, outputs

    def forward(self, features: dict[str, torch.Tensor]):
        logger.warning("PyramidPoolingModuleFPN: call forward_features(); forward() is an alias.")
        return self.forward_features(features)
