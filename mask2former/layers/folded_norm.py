"""Convolutions whose frozen batch norm is folded into them at inference.

Detectron2's ResNets apply ``FrozenBatchNorm2d`` after each convolution: without autograd it is
a separate ``batch_norm`` pass over every activation map (about 5 % of the COCO R50 network's
CPU time at 800x1216). The norm is an affine map per output channel,
``y = scale * conv(x) + shift`` with ``scale = weight / sqrt(running_var + eps)`` and
``shift = bias - running_mean * scale``, so it can be folded into the convolution:
``conv(x; W * scale, b * scale + shift)``.

:func:`fold_frozen_batchnorm` switches every such ``detectron2.layers.Conv2d`` of a model to
:class:`FrozenNormFoldedConv2d`, a subclass with the same parameters, buffers and state-dict
keys (checkpoints load and save as before) whose forward folds the norm when autograd is off.
The folded weights are computed at each call (a pass over the weights, much smaller than the
activations at detection resolutions), so they never go stale. With autograd on, and under
graph capture, the forward is Detectron2's.
"""

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from torch import nn


class FrozenNormFoldedConv2d(Conv2d):
    """``detectron2.layers.Conv2d`` with a ``FrozenBatchNorm2d`` norm, folded without autograd."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        capturing = torch.jit.is_scripting() or torch.jit.is_tracing()
        if torch.is_grad_enabled() or capturing or not isinstance(self.norm, FrozenBatchNorm2d):
            return super().forward(x)
        norm = self.norm
        scale = norm.weight * (norm.running_var + norm.eps).rsqrt()  # (C_out,)
        shift = norm.bias - norm.running_mean * scale  # (C_out,)
        weight = self.weight * scale.view(-1, 1, 1, 1)  # (C_out, C_in/groups, kh, kw)
        bias = shift if self.bias is None else self.bias * scale + shift  # (C_out,)
        x = F.conv2d(
            x, weight.to(x.dtype), bias.to(x.dtype), self.stride, self.padding, self.dilation,
            self.groups,
        )
        if self.activation is not None:
            x = self.activation(x)
        return x


def fold_frozen_batchnorm(module: nn.Module) -> int:
    """Switches every Detectron2 ``Conv2d`` inside ``module`` whose norm is a
    ``FrozenBatchNorm2d`` to :class:`FrozenNormFoldedConv2d` (in place; parameters and state
    dict unchanged). Returns how many were switched."""
    count = 0
    for m in module.modules():
        if type(m) is Conv2d and isinstance(m.norm, FrozenBatchNorm2d):
            m.__class__ = FrozenNormFoldedConv2d
            count += 1
    return count
