"""Compiled multi-scale deformable attention and the choice of implementation.

The compiled extension ``mask2former._C`` (sources in ``mask2former/layers/csrc``, built by
``setup.py``) registers two operators, ``torch.ops.mask2former.ms_deform_attn`` and its
backward, with CPU kernels (float32, float64) and, when built with CUDA, CUDA kernels (float16,
bfloat16, float32, float64). This module registers their autograd formula and their shape
functions (so ``torch.compile`` can trace them), and decides per call which implementation runs.

The implementation is a per-module setting (``MSDeformAttn.impl``, set from the config key
``MODEL.SEM_SEG_HEAD.DEFORMABLE_ATTENTION_IMPL``), never process-global state:

- ``"pytorch"``: always the pure-PyTorch path;
- ``"auto"``: the compiled op when it has a kernel for the device and dtype of the inputs, else
  the pure-PyTorch path (also while exporting to ONNX, tracing with TorchScript, or when the
  extension is missing).

The environment variable ``M2F_MSDA_IMPL=pytorch`` only changes the user default
(:func:`default_impl`, the default of the config key). A missing or broken extension logs one
warning at import and never raises.
"""

import importlib
import logging
import os

import torch

logger = logging.getLogger(__name__)

IMPLS = ("auto", "pytorch")
# Read only by default_impl (the user default); nothing here sets it.
ENV_VAR = "M2F_MSDA_IMPL"
_CPU_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _load_extension():
    """The compiled module, or None (with one warning) when it is missing or cannot load."""
    try:
        return importlib.import_module("mask2former._C")
    except (ImportError, OSError, RuntimeError) as exc:
        logger.warning(
            "compiled multi-scale deformable attention unavailable (%s); using the pure-PyTorch "
            "path. Build it with `pip install --no-build-isolation --no-deps -e .`",
            exc,
        )
        return None


_C = _load_extension()
CPU_BUILT = _C is not None
CUDA_BUILT = CPU_BUILT and bool(getattr(_C, "WITH_CUDA", False))


def check_impl(impl: str) -> str:
    """Returns ``impl`` if it is one of :data:`IMPLS`, else raises ValueError."""
    if impl not in IMPLS:
        raise ValueError(
            f"deformable attention implementation must be one of {IMPLS}, got {impl!r}"
        )
    return impl


def default_impl() -> str:
    """The user default: "pytorch" when ``M2F_MSDA_IMPL=pytorch`` is set, else "auto"."""
    return "pytorch" if os.environ.get(ENV_VAR, "").strip().lower() == "pytorch" else "auto"


def use_compiled(
    value: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    impl: str = "auto",
) -> bool:
    """Whether implementation ``impl`` runs these inputs with :func:`ms_deform_attn_compiled`
    (else with the pure-PyTorch path)."""
    if check_impl(impl) == "pytorch" or not CPU_BUILT:
        return False
    if torch.onnx.is_in_onnx_export() or torch.jit.is_tracing():
        return False
    device, dtype = value.device, value.dtype
    if sampling_locations.dtype != dtype or attention_weights.dtype != dtype:
        return False
    if sampling_locations.device != device or attention_weights.device != device:
        return False
    if device.type == "cpu":
        return dtype in _CPU_DTYPES
    if device.type == "cuda":
        return CUDA_BUILT and dtype in _CUDA_DTYPES
    return False


def active_impl(device_type: str, impl: str = "auto") -> str:
    """What float32 inputs on this device type ("cpu", "cuda") run with implementation ``impl``:
    "compiled" or "pytorch"."""
    if check_impl(impl) == "pytorch" or not CPU_BUILT:
        return "pytorch"
    if device_type == "cpu" or (device_type == "cuda" and CUDA_BUILT):
        return "compiled"
    return "pytorch"


def ms_deform_attn_compiled(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """The compiled op; same arguments and result as ``ms_deform_attn_pytorch``.

    Inputs must satisfy :func:`use_compiled`. Differentiable for value, sampling_locations and
    attention_weights.
    """
    return torch.ops.mask2former.ms_deform_attn(
        value,
        spatial_shapes.long(),
        level_start_index.long(),
        sampling_locations,
        attention_weights,
    )


def _register_python_parts() -> None:
    """Shape functions and autograd formula of the compiled ops."""

    @torch.library.register_fake("mask2former::ms_deform_attn")
    def _forward_fake(value, spatial_shapes, level_start_index, sampling_locations, weights):
        n, _, m, d = value.shape
        # (N, Lq, M * D)
        return value.new_empty((n, sampling_locations.shape[1], m * d))

    @torch.library.register_fake("mask2former::ms_deform_attn_backward")
    def _backward_fake(value, spatial_shapes, level_start_index, sampling_locations, weights, grad):
        return (
            torch.empty_like(value, memory_format=torch.contiguous_format),
            torch.empty_like(sampling_locations, memory_format=torch.contiguous_format),
            torch.empty_like(weights, memory_format=torch.contiguous_format),
        )

    def _setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def _backward(ctx, grad_output):
        value, spatial_shapes, level_start_index, sampling_locations, weights = ctx.saved_tensors
        grad_value, grad_locations, grad_weights = torch.ops.mask2former.ms_deform_attn_backward(
            value,
            spatial_shapes,
            level_start_index,
            sampling_locations,
            weights,
            grad_output.contiguous(),
        )
        return grad_value, None, None, grad_locations, grad_weights

    torch.library.register_autograd(
        "mask2former::ms_deform_attn", _backward, setup_context=_setup_context
    )


if CPU_BUILT:
    _register_python_parts()
