"""Optimizer of Mask2Former: per-parameter groups and full-model gradient clipping.

Follows the official ``train_net.py``: every parameter of a module whose name contains
"backbone" gets ``BASE_LR * BACKBONE_MULTIPLIER``; parameters of normalization layers get
``WEIGHT_DECAY_NORM``; ``nn.Embedding`` weights get ``WEIGHT_DECAY_EMBED``; the Swin position
tables get no weight decay. A parameter shared by several modules is optimized once.
"""

from __future__ import annotations

import copy
import functools
import itertools
import logging
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.solver.build import maybe_add_gradient_clipping, reduce_param_groups
from torch import nn

__all__ = ["build_optimizer", "get_param_groups", "NORM_MODULE_TYPES"]

logger = logging.getLogger(__name__)

# Parameters of these layers take SOLVER.WEIGHT_DECAY_NORM (detectron2's FrozenBatchNorm2d has
# no parameters, and NaiveSyncBatchNorm subclasses BatchNorm2d).
NORM_MODULE_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)

# Swin's parameter names that take no weight decay.
_NO_DECAY_PARAM_NAMES = ("relative_position_bias_table", "absolute_pos_embed")

_OPTIMIZERS = {"ADAMW": torch.optim.AdamW, "SGD": torch.optim.SGD}


def get_param_groups(cfg: CfgNode, model: nn.Module) -> list[dict[str, Any]]:
    """Parameter groups (lr, weight_decay) of every trainable parameter of ``model``.

    Groups with equal hyper-parameters are merged, so the optimizer sees few groups.
    """
    solver = cfg.SOLVER
    defaults = {"lr": solver.BASE_LR, "weight_decay": solver.WEIGHT_DECAY}
    params: list[dict[str, Any]] = []
    memo: set[nn.Parameter] = set()
    for module_name, module in model.named_modules():
        for param_name, value in module.named_parameters(recurse=False):
            if not value.requires_grad or value in memo:
                continue
            memo.add(value)
            hyperparams = copy.copy(defaults)
            if "backbone" in module_name:
                hyperparams["lr"] = solver.BASE_LR * solver.BACKBONE_MULTIPLIER
            if param_name in _NO_DECAY_PARAM_NAMES:
                hyperparams["weight_decay"] = 0.0
            if isinstance(module, NORM_MODULE_TYPES):
                hyperparams["weight_decay"] = solver.WEIGHT_DECAY_NORM
            if isinstance(module, nn.Embedding):
                hyperparams["weight_decay"] = solver.WEIGHT_DECAY_EMBED
            params.append({"params": [value], **hyperparams})
    return reduce_param_groups(params)


@functools.cache
def _full_model_clipping_class(
    optimizer_type: type[torch.optim.Optimizer], max_norm: float, norm_type: float
) -> type[torch.optim.Optimizer]:
    """A subclass of ``optimizer_type`` that clips the global gradient norm before each step."""

    def step(self, closure=None):
        all_params = itertools.chain.from_iterable(g["params"] for g in self.param_groups)
        torch.nn.utils.clip_grad_norm_(all_params, max_norm, norm_type)
        return optimizer_type.step(self, closure)

    return type(
        f"{optimizer_type.__name__}WithFullModelGradientClipping", (optimizer_type,), {"step": step}
    )


def _can_fuse(param_groups: list[dict[str, Any]]) -> bool:
    """Whether every parameter is a floating-point tensor on a device the fused kernels take."""
    params = [p for group in param_groups for p in group["params"]]
    return bool(params) and all(
        p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params
    )


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """Build the optimizer named by ``SOLVER.OPTIMIZER`` ("ADAMW" or "SGD") for ``model``.

    ``SOLVER.CLIP_GRADIENTS`` with ``CLIP_TYPE: full_model`` clips the norm (``NORM_TYPE``,
    2 = L2) of all gradients together to ``CLIP_VALUE`` before each step; the other clip types
    ("value", "norm": per parameter) are Detectron2's.
    """
    name = cfg.SOLVER.OPTIMIZER
    if name not in _OPTIMIZERS:
        raise ValueError(
            f"Unknown SOLVER.OPTIMIZER {name!r}; expected one of {sorted(_OPTIMIZERS)}."
        )
    optimizer_type = _OPTIMIZERS[name]
    clip = cfg.SOLVER.CLIP_GRADIENTS
    full_model = clip.ENABLED and clip.CLIP_TYPE == "full_model"
    if full_model and clip.CLIP_VALUE > 0.0:
        optimizer_type = _full_model_clipping_class(
            optimizer_type, float(clip.CLIP_VALUE), float(clip.NORM_TYPE)
        )

    params = get_param_groups(cfg, model)
    if name == "SGD":
        optimizer = optimizer_type(
            params, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM,
            nesterov=cfg.SOLVER.NESTEROV,
        )
    else:
        # PyTorch's fused AdamW (one kernel for all tensors; CPU and CUDA) gives the same
        # updates as the per-tensor loop to float rounding, about 4x faster on the CPU.
        optimizer = optimizer_type(params, lr=cfg.SOLVER.BASE_LR, fused=_can_fuse(params))
    if not full_model:
        optimizer = maybe_add_gradient_clipping(cfg, optimizer)
    logger.info(
        "Optimizer %s with %d parameter groups%s.", type(optimizer).__name__,
        len(optimizer.param_groups),
        f", full-model gradient clipping at {clip.CLIP_VALUE}" if full_model else "",
    )
    return optimizer
