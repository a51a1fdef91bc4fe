"""Backbones of the Transfiner configs: ResNet-FPN with deformable convolutions that run
through ``torchvision.ops.deform_conv2d``, and FPN on the package's Swin Transformer.

Detectron2's ``DeformConv`` / ``ModulatedDeformConv`` need its compiled ``_C`` on CUDA and for
every backward pass; torchvision's op runs forward and backward on the CPU and on CUDA. The
backbone is Detectron2's ``build_resnet_fpn_backbone`` with each deformable conv swapped for
:class:`TorchvisionDeformConv`, which keeps the parameter names (``weight``, ``bias``,
``norm.*``), so Detectron2 DCN checkpoints load unchanged.

``build_swin_fpn_backbone``: Detectron2's FPN (P2-P6) on :class:`D2SwinTransformer` (res2-res5).
The reference's Swin models use another Swin implementation (stages named ``stage2..5``); their
backbone keys would need a converter, which this package does not have yet.
"""

from __future__ import annotations

import torch
from detectron2.layers import ShapeSpec
from detectron2.layers.deform_conv import DeformConv, ModulatedDeformConv
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool, build_resnet_fpn_backbone
from torch import nn
from torchvision.ops import deform_conv2d

from ...modeling.backbone.swin import D2SwinTransformer

__all__ = [
    "TorchvisionDeformConv",
    "build_resnet_fpn_backbone_tvdcn",
    "build_swin_fpn_backbone",
    "use_torchvision_dcn",
]


class TorchvisionDeformConv(nn.Module):
    """A deformable 3x3 conv (DCNv1, or DCNv2 with a modulation mask) by torchvision."""

    def __init__(self, source: DeformConv | ModulatedDeformConv):
        """Take over ``source``'s parameters, norm and hyper-parameters."""
        super().__init__()
        self.modulated = isinstance(source, ModulatedDeformConv)
        self.weight = source.weight
        self.bias = source.bias if self.modulated else None
        self.norm = source.norm
        self.activation = source.activation
        pair = nn.modules.utils._pair
        self.stride = pair(source.stride)
        self.padding = pair(source.padding)
        self.dilation = pair(source.dilation)

    def forward(
        self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (N, C, H, W), offset (N, 2*G*9, H', W'), mask (N, G*9, H', W') -> (N, C', H', W')."""
        if self.modulated and mask is None:
            raise ValueError("a modulated deformable conv needs its mask")
        x = deform_conv2d(
            x, offset, self.weight, self.bias, stride=self.stride, padding=self.padding,
            dilation=self.dilation, mask=mask,
        )  # (N, C', H', W')
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


def use_torchvision_dcn(module: nn.Module) -> int:
    """Replace every Detectron2 deformable conv inside ``module``; returns how many."""
    swaps = [
        (parent, name, child)
        for parent in module.modules()
        for name, child in parent.named_children()
        if isinstance(child, (DeformConv, ModulatedDeformConv))
    ]
    for parent, name, child in swaps:
        setattr(parent, name, TorchvisionDeformConv(child))
    return len(swaps)


@BACKBONE_REGISTRY.register()
def build_resnet_fpn_backbone_tvdcn(cfg, input_shape: ShapeSpec) -> Backbone:
    """Detectron2's ResNet-FPN (``MODEL.RESNETS.DEFORM_*`` apply) with torchvision DCN."""
    backbone = build_resnet_fpn_backbone(cfg, input_shape)
    use_torchvision_dcn(backbone)
    return backbone


@BACKBONE_REGISTRY.register()
def build_swin_fpn_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """FPN (``MODEL.FPN.*``, top block max-pool: P2-P6) on the package's Swin
    (``MODEL.SWIN.*``; ``MODEL.FPN.IN_FEATURES`` names its outputs, res2-res5)."""
    return FPN(
        bottom_up=D2SwinTransformer(cfg, input_shape),
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
