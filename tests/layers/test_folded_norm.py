"""Frozen batch norms folded into their convolutions at inference."""

import copy

import pytest
import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d

from mask2former.layers import FrozenNormFoldedConv2d, fold_frozen_batchnorm


def _conv_with_frozen_bn(bias: bool, groups: int = 1, seed: int = 0) -> Conv2d:
    gen = torch.Generator().manual_seed(seed)
    norm = FrozenBatchNorm2d(8, eps=1e-3)
    norm.weight.copy_(torch.rand(8, generator=gen) + 0.5)
    norm.bias.copy_(torch.randn(8, generator=gen))
    norm.running_mean.copy_(torch.randn(8, generator=gen))
    norm.running_var.copy_(torch.rand(8, generator=gen) + 0.1)
    conv = Conv2d(4, 8, 3, padding=1, stride=2, bias=bias, groups=groups, norm=norm,
                  activation=torch.relu)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen))
        if bias:
            conv.bias.copy_(torch.randn(8, generator=gen))
    return conv


def _reference(conv: Conv2d, x: torch.Tensor) -> torch.Tensor:
    """conv, then the norm written out from its definition, then ReLU."""
    y = torch.nn.functional.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding,
                                   conv.dilation, conv.groups)
    n = conv.norm
    y = (y - n.running_mean.view(1, -1, 1, 1)) / torch.sqrt(
        n.running_var.view(1, -1, 1, 1) + n.eps
    )
    return torch.relu(y * n.weight.view(1, -1, 1, 1) + n.bias.view(1, -1, 1, 1))


@pytest.mark.parametrize("bias,groups", [(False, 1), (True, 1), (False, 2)])
def test_folded_conv_matches_conv_then_norm(bias, groups):
    conv = _conv_with_frozen_bn(bias, groups)
    folded = copy.deepcopy(conv)
    assert fold_frozen_batchnorm(folded) == 1
    assert type(folded) is FrozenNormFoldedConv2d
    x = torch.randn(2, 4, 9, 11)
    with torch.no_grad():
        expected = _reference(conv, x)
        torch.testing.assert_close(folded(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)


def test_folding_keeps_state_dict_and_follows_loaded_weights():
    conv = _conv_with_frozen_bn(bias=False)
    before = {k: v.shape for k, v in conv.state_dict().items()}
    fold_frozen_batchnorm(conv)
    assert {k: v.shape for k, v in conv.state_dict().items()} == before
    x = torch.randn(1, 4, 8, 8)
    other = _conv_with_frozen_bn(bias=False, seed=1)
    conv.load_state_dict(other.state_dict())  # new weights and statistics: nothing stale
    with torch.no_grad():
        torch.testing.assert_close(conv(x), _reference(other, x), rtol=1e-5, atol=1e-5)


def test_autograd_takes_detectron2_forward():
    conv = _conv_with_frozen_bn(bias=True)
    fold_frozen_batchnorm(conv)
    x = torch.randn(1, 4, 8, 8, requires_grad=True)
    y = conv(x)
    y.sum().backward()
    assert x.grad is not None and conv.weight.grad is not None
    torch.testing.assert_close(y.detach(), _reference(conv, x.detach()), rtol=1e-5, atol=1e-5)


def test_only_frozen_batchnorm_convs_are_switched():
    model = torch.nn.Sequential(
        _conv_with_frozen_bn(bias=False),
        Conv2d(8, 8, 1, norm=torch.nn.GroupNorm(2, 8)),
        Conv2d(8, 8, 1),
    )
    assert fold_frozen_batchnorm(model) == 1
    assert [type(m) for m in model] == [FrozenNormFoldedConv2d, Conv2d, Conv2d]
