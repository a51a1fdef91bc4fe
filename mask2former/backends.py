"""Where a :class:`~mask2former.predictor.Predictor` runs the model's network.

Every backend runs the same network (:class:`~mask2former.modeling.inference.InferenceNetwork`:
normalised, padded images (B, 3, H, W) in, ``pred_logits`` (B, Q, K+1) and ``pred_masks``
(B, Q, H/s, W/s) out, as torch tensors on the model's device). Pre-processing and the shared
``PostProcessor`` stay in PyTorch, so the backends differ only in the network's time:

- ``"eager"``: the PyTorch modules as they are; any device, and ``torch.autocast`` for a
  bfloat16 / float16 ``dtype``.
- ``"compile"``: ``torch.compile(dynamic=False)``: compiled at the first call of each input
  shape (tens of seconds on the CPU; needs a C++ compiler there), reused afterwards.
- ``"onnxruntime"`` (pip package ``onnxruntime``) and ``"openvino"`` (pip package
  ``openvino``): the network is exported to ONNX (:func:`~mask2former.export.export_onnx`,
  with the pure-PyTorch deformable attention) at the first call of each input shape
  (B, 3, H_pad, W_pad) and loaded into the runtime, in float32 on the CPU, with
  ``torch.get_num_threads()`` threads. Graphs have fixed shapes: the model's Python code turns
  feature-map sizes into constants (deformable attention's level shapes, position encodings),
  so dynamic ONNX shapes would be wrong. The graphs of the last :data:`MAX_GRAPHS` shapes are
  kept; export costs about as long as ``torch.compile``'s first call. Both need the
  pip packages ``onnx`` and ``onnxscript`` for the export.
- ``"auto"``: the first backend of :data:`AUTO_ORDER` (fastest first, measured with
  ``benchmarks/predictor_speed.py``) that is installed and applies to the model, device and
  dtype. If its export fails for a model family, the predictor falls back to the next one
  (logged).

The environment variable ``M2F_PREDICTOR_BACKEND`` sets the backend of predictors that do not
name one (default "auto").
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Collection

import torch
from torch import nn

from .export import export_onnx, load_onnx, load_openvino, run_onnx, run_openvino

__all__ = [
    "AUTO_ORDER",
    "BACKENDS",
    "BackendUnavailableError",
    "ExportFailedError",
    "choose_backend",
    "check_backend",
    "make_network",
]

logger = logging.getLogger(__name__)

BACKENDS = ("eager", "compile", "onnxruntime", "openvino")
# Fastest first on small models, from benchmarks/predictor_speed.py (figures in the README): on
# the synthetic R18 at 256x256 (1 thread) onnxruntime and OpenVINO took 0.79x-0.80x eager's
# network time and torch.compile 0.90x. On the COCO R50 at 800x1216 (2 threads, 2026-12-03)
# compile led in most runs (3.3-4.0 s; OpenVINO 3.6-4.3 s), but its first call per input shape
# costs about a minute cold, more than an export. "auto" takes the first that applies.
AUTO_ORDER = ("openvino", "onnxruntime", "compile", "eager")
# Pip packages each backend needs (importable module name -> pip name).
PACKAGES = {
    "eager": {},
    "compile": {},
    "onnxruntime": {"onnxruntime": "onnxruntime", "onnx": "onnx", "onnxscript": "onnxscript"},
    "openvino": {"openvino": "openvino", "onnx": "onnx", "onnxscript": "onnxscript"},
}
EXPORTED = ("onnxruntime", "openvino")
ENV_VAR = "M2F_PREDICTOR_BACKEND"
# Exported graphs (one per input shape) kept per predictor, least recently used dropped first.
MAX_GRAPHS = 4

Network = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class BackendUnavailableError(ImportError):
    """A requested backend whose pip package (or, for "compile", C++ compiler) is missing."""


class ExportFailedError(RuntimeError):
    """The network could not be exported for an "onnxruntime" / "openvino" backend."""


def default_backend() -> str:
    """``$M2F_PREDICTOR_BACKEND``, or "auto"."""
    backend = os.environ.get(ENV_VAR, "auto")
    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"${ENV_VAR} must be one of {('auto', *BACKENDS)}, got {backend!r}")
    return backend


def missing_packages(backend: str) -> list[str]:
    """Pip names of the packages ``backend`` needs that are not importable."""
    return [pip for module, pip in PACKAGES[backend].items() if not _importable(module)]


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _has_cxx_compiler() -> bool:
    return any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if c)


def _why_not(
    backend: str, model: nn.Module, device: torch.device, dtype: torch.dtype | None
) -> tuple[type[Exception], str] | None:
    """(error type, reason) why ``backend`` cannot run ``model``, or None when it can."""
    if backend == "eager":
        return None
    if not hasattr(model, "forward_network"):
        return ValueError, f"it needs a model with forward_network; {type(model).__name__} has none"
    missing = missing_packages(backend)
    if missing:
        packages = " ".join(missing)
        return BackendUnavailableError, (
            f"pip package(s) {packages} not installed "
            f"(pip install -c requirements/constraints.txt {packages})"
        )
    if backend == "compile":
        if device.type == "cpu" and not _has_cxx_compiler():
            return BackendUnavailableError, "torch.compile on the CPU needs a C++ compiler (g++)"
        return None
    if device.type != "cpu":
        return ValueError, f"it runs on the CPU and the model is on {device.type}"
    if dtype not in (None, torch.float32):
        return ValueError, f"it runs float32 only (dtype {dtype} needs eager or compile)"
    return None


def check_backend(
    backend: str, model: nn.Module, device: torch.device, dtype: torch.dtype | None
) -> None:
    """Raise a clear error when the requested ``backend`` cannot run ``model``.

    Raises:
        ValueError: an unknown backend, or one that does not apply (no ``forward_network``, a
            device or dtype it does not run).
        BackendUnavailableError: its pip package is not installed (named in the message).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {('auto', *BACKENDS)}, got {backend!r}")
    problem = _why_not(backend, model, device, dtype)
    if problem is not None:
        error, reason = problem
        raise error(f'backend "{backend}" cannot run here: {reason}')


def choose_backend(
    model: nn.Module,
    device: torch.device,
    dtype: torch.dtype | None,
    exclude: Collection[str] = (),
) -> tuple[str, str]:
    """The "auto" choice: the first of :data:`AUTO_ORDER` (less ``exclude``) that can run
    ``model``, and a one-line reason naming the faster ones skipped and why."""
    skipped = []
    for backend in AUTO_ORDER:
        if backend in exclude:
            continue
        problem = _why_not(backend, model, device, dtype)
        if problem is None:
            reason = f"the fastest applicable of {', '.join(AUTO_ORDER)}"
            return backend, reason + (f"; skipped {'; '.join(skipped)}" if skipped else "")
        skipped.append(f"{backend}: {problem[1]}")
    raise AssertionError("eager always applies")  # pragma: no cover


class ExportedNetwork:
    """A network run by an ONNX runtime: one exported graph per input shape (see the module
    docstring), the :data:`MAX_GRAPHS` last used kept.

    Args:
        network: the PyTorch network (its ``model`` is exported).
        backend: "onnxruntime" or "openvino".
    """

    _RUNTIMES = {"onnxruntime": (load_onnx, run_onnx), "openvino": (load_openvino, run_openvino)}

    def __init__(self, network: nn.Module, backend: str, max_graphs: int = MAX_GRAPHS):
        self.model = network.model
        self.backend = backend
        self.load, self.run = self._RUNTIMES[backend]
        self.max_graphs = max_graphs
        self.graphs: OrderedDict[tuple[int, ...], object] = OrderedDict()

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, H, W) -> pred_logits (B, Q, K+1), pred_masks (B, Q, H/s, W/s)."""
        shape = tuple(images.shape)
        graph = self.graphs.pop(shape, None)
        if graph is None:
            graph = self._export(shape)
        self.graphs[shape] = graph  # most recently used last
        while len(self.graphs) > self.max_graphs:
            self.graphs.popitem(last=False)
        logits, masks = self.run(graph, images)
        return torch.from_numpy(logits), torch.from_numpy(masks)

    def _export(self, shape: tuple[int, ...]):
        batch, _, height, width = shape
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="m2f-onnx-") as folder:
            path = os.path.join(folder, "network.onnx")
            try:
                # Exporting traces with autograd's bookkeeping, which inference mode switches off.
                with torch.inference_mode(False):
                    export_onnx(self.model, path, height=height, width=width, batch_size=batch)
            except Exception as e:
                raise ExportFailedError(
                    f"{self.backend}: exporting the network of {type(self.model).__name__} to "
                    f"ONNX for inputs of shape {shape} failed: {type(e).__name__}: {e}"
                ) from e
            graph = self.load(path, torch.get_num_threads())
        logger.info(
            "%s: exported and loaded the network for inputs of shape %s in %.1fs (once per "
            "input shape)", self.backend, shape, time.perf_counter() - start,
        )  # fmt: skip
        return graph


def make_network(backend: str, network: nn.Module) -> Network:
    """The callable that runs ``network`` (an ``InferenceNetwork``) in ``backend``."""
    if backend == "eager":
        return network
    if backend == "compile":
        return torch.compile(network, dynamic=False)
    return ExportedNetwork(network, backend)
