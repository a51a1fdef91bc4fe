"""ResNet-vd ("bag of tricks" D variant) with optional deformable 3x3 convs: FastInst's R50-d-DCN.

Differences from Detectron2's ResNet: a deep stem of three 3x3 convs (32, 32, 64 channels),
projection shortcuts that average-pool before a stride-1 1x1 conv, and stride on the 3x3 conv.
Parameter names follow the timm-style layout of the official checkpoints (``conv1.0``, ``bn1``,
``layer1.0.downsample.1``, ``conv2_offset``...).

Deformable convs use ``torchvision.ops.deform_conv2d``, which has CPU and CUDA kernels, so the
DCN configs run without a compiled Detectron2 op.
"""

from __future__ import annotations

import math

import torch
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn
from torch.nn import functional as F
from torchvision.ops import deform_conv2d

__all__ = ["DeformConv2d", "ResNetVd", "build_resnet_vd_backbone"]

# Blocks per stage of the supported depths.
STAGE_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
STAGE_NAMES = ("res2", "res3", "res4", "res5")


class DeformConv2d(nn.Module):
    """Deformable convolution (v1, one offset group) on ``torchvision.ops.deform_conv2d``.

    Offsets are (dy, dx) pairs per kernel position, the layout of Detectron2's ``DeformConv``.
    Computed in float32 (as the official block does), returned in the input dtype.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
    ):
        super().__init__()
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels, kernel_size, kernel_size)
        )  # (C_out, C_in, k, k)
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, H, W), offset (B, 2*k*k, H', W') -> (B, C_out, H', W')."""
        out = deform_conv2d(
            x.float(), offset.float(), self.weight.float(),
            stride=self.stride, padding=self.padding, dilation=self.dilation,
        )  # (B, C_out, H', W')
        return out.to(x.dtype)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride, optionally deformable) -> 1x1 (x4) residual block."""

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        *,
        stride: int,
        norm: str,
        deformable: bool,
        downsample: nn.Module | None,
    ):
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = get_norm(norm, planes)
        self.deformable = deformable
        if deformable:
            # Offsets start at zero: the block starts as a plain 3x3 conv.
            self.conv2_offset = nn.Conv2d(planes, 18, 3, stride=stride, padding=1)
            nn.init.zeros_(self.conv2_offset.weight)
            nn.init.zeros_(self.conv2_offset.bias)
            self.conv2 = DeformConv2d(planes, planes, 3, stride=stride, padding=1)
        else:
            self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = get_norm(norm, planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = get_norm(norm, out_channels)
        self.downsample = downsample
        nn.init.zeros_(self.bn3.weight)  # zero-init the last norm: the block starts as identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        if self.deformable:
            out = self.conv2(out, self.conv2_offset(out))
        else:
            out = self.conv2(out)
        out = F.relu(self.bn2(out))
        out = self.bn3(self.conv3(out))
        return F.relu(out + shortcut)


def _avg_down(in_channels: int, out_channels: int, stride: int, norm: str) -> nn.Sequential:
    """Projection shortcut: average pool (stride 2 stages), 1x1 conv, norm.

    Indices 0 (pool), 1 (conv), 2 (norm) are the official parameter names.
    """
    pool = (
        nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)
        if stride > 1
        else nn.Identity()
    )
    return nn.Sequential(
        pool, nn.Conv2d(in_channels, out_channels, 1, bias=False), get_norm(norm, out_channels)
    )


class ResNetVd(Backbone):
    """ResNet-vd backbone returning res2..res5 (strides 4..32).

    Args:
        depth: 50, 101 or 152.
        norm: Detectron2 norm name ("FrozenBN", "BN", "SyncBN", ...).
        deform_on_per_stage: 4 flags, deformable 3x3 convs in res2..res5.
        out_features: the returned levels among "res2".."res5".
        freeze_at: 0 trains all; 1 freezes the stem; k >= 2 also freezes res2..res_k.
    """

    def __init__(
        self,
        *,
        depth: int,
        norm: str = "FrozenBN",
        deform_on_per_stage: tuple[bool, bool, bool, bool] = (False,) * 4,
        out_features: tuple[str, ...] = STAGE_NAMES,
        freeze_at: int = 0,
    ):
        super().__init__()
        if depth not in STAGE_BLOCKS:
            raise ValueError(
                f"build_resnet_vd_backbone: MODEL.RESNETS.DEPTH must be one of "
                f"{sorted(STAGE_BLOCKS)}, got {depth}"
            )
        if len(deform_on_per_stage) != 4:
            raise ValueError(
                "MODEL.RESNETS.DEFORM_ON_PER_STAGE needs 4 flags (res2..res5), got "
                f"{list(deform_on_per_stage)}"
            )
        unknown = set(out_features) - set(STAGE_NAMES)
        if unknown:
            raise ValueError(f"ResNetVd: unknown out_features {sorted(unknown)}")
        stem = 32
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, stem, 3, stride=2, padding=1, bias=False),
            get_norm(norm, stem),
            nn.ReLU(inplace=True),
            nn.Conv2d(stem, stem, 3, padding=1, bias=False),
            get_norm(norm, stem),
            nn.ReLU(inplace=True),
            nn.Conv2d(stem, 2 * stem, 3, padding=1, bias=False),
        )
        self.bn1 = get_norm(norm, 2 * stem)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        in_channels = 2 * stem
        for i, (num_blocks, deformable) in enumerate(
            zip(STAGE_BLOCKS[depth], deform_on_per_stage)
        ):
            planes = 64 * 2**i
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(num_blocks):
                downsample = None
                if j == 0:
                    downsample = _avg_down(in_channels, planes * 4, stride, norm)
                blocks.append(
                    Bottleneck(
                        in_channels, planes, stride=stride if j == 0 else 1, norm=norm,
                        deformable=bool(deformable), downsample=downsample,
                    )
                )
                in_channels = planes * 4
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))

        self._out_features = [name for name in STAGE_NAMES if name in out_features]
        self._out_feature_channels = {name: 256 * 2**i for i, name in enumerate(STAGE_NAMES)}
        self._out_feature_strides = {name: 4 * 2**i for i, name in enumerate(STAGE_NAMES)}
        self.freeze(freeze_at)

    @property
    def size_divisibility(self) -> int:
        return 32

    def freeze(self, freeze_at: int) -> ResNetVd:
        """Freeze the stem (``freeze_at >= 1``) and res2..res_k (``freeze_at = k``)."""
        parts: list[nn.Module] = []
        if freeze_at >= 1:
            parts += [self.conv1, self.bn1]
        parts += [getattr(self, f"layer{i}") for i in range(1, min(freeze_at, 5))]
        for module in parts:
            for p in module.parameters():
                p.requires_grad_(False)
            FrozenBatchNorm2d.convert_frozen_batchnorm(module)
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x (B, 3, H, W) -> {"res2": (B, 256, H/4, W/4), ..., "res5": (B, 2048, H/32, W/32)}
        restricted to ``out_features``."""
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)
        outputs = {}
        for i, name in enumerate(STAGE_NAMES):
            x = getattr(self, f"layer{i + 1}")(x)  # (B, 256 * 2^i, H/2^(i+2), W/2^(i+2))
            if name in self._out_features:
                outputs[name] = x
        return outputs

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }


@BACKBONE_REGISTRY.register()
def build_resnet_vd_backbone(cfg, input_shape: ShapeSpec) -> ResNetVd:
    """ResNet-vd from ``MODEL.RESNETS`` (DEPTH, NORM, DEFORM_ON_PER_STAGE, OUT_FEATURES) and
    ``MODEL.BACKBONE.FREEZE_AT``."""
    if input_shape.channels not in (None, 3):
        raise ValueError(f"build_resnet_vd_backbone: expects 3 input channels, got {input_shape}")
    resnets = cfg.MODEL.RESNETS
    return ResNetVd(
        depth=resnets.DEPTH,
        norm=resnets.NORM,
        deform_on_per_stage=tuple(resnets.DEFORM_ON_PER_STAGE),
        out_features=tuple(resnets.OUT_FEATURES),
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
    )
