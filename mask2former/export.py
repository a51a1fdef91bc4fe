"""Export of a model's network (for Mask2Former: backbone -> pixel decoder -> transformer
decoder).

The exported graph is the network of the inference contract
(:class:`~mask2former.modeling.inference.InferenceNetwork`): normalised, padded images in,
``pred_logits`` and ``pred_masks`` out. Pre-processing (:func:`prepare_image`) and
post-processing (:func:`postprocess`, the model's ``postprocessor``) stay outside the graph, as
in segment-anything's ONNX wrapper. Any model family that meets the contract exports. Two
formats:

- ONNX (:func:`export_onnx`), run with onnxruntime (:func:`load_onnx`, :func:`run_onnx`) or
  OpenVINO (:func:`load_openvino`, :func:`run_openvino`);
- ``torch.export`` (:func:`export_torch`), an ``ExportedProgram`` saved as ``.pt2``.

The :class:`~mask2former.predictor.Predictor` runs these graphs as its "onnxruntime" and
"openvino" backends (:mod:`mask2former.backends`).

Both are traced at one fixed input size. The multi-scale deformable attention runs its
pure-PyTorch path while exporting (the compiled op has no ONNX or export translation).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from detectron2.data import transforms as T
from torch import nn

from .layers import ms_deform_attn_impl
from .modeling.inference import InferenceNetwork, normalize_and_pad, round_up_to_divisor

__all__ = [
    "export_onnx",
    "export_torch",
    "load_onnx",
    "load_openvino",
    "postprocess",
    "prepare_image",
    "run_onnx",
    "run_openvino",
]

logger = logging.getLogger(__name__)

INPUT_NAMES = ["images"]
OUTPUT_NAMES = ["pred_logits", "pred_masks"]


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """Only errors from these loggers inside (the ONNX optimiser warns about every multi-output
    node it does not fold, and logs every pass at INFO)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def prepare_image(
    model: nn.Module, image: np.ndarray, height: int, width: int
) -> tuple[torch.Tensor, tuple[int, int]]:
    """One (H0, W0, 3) uint8 image in the model's input format -> the exported input.

    The image is scaled to fit inside (height, width), keeping its aspect ratio, normalised,
    and zero-padded at the bottom and right (zero is the mean colour after normalisation).

    Returns:
        (1, 3, height, width) float32 on the model's device, and the (h, w) of the scaled image
        inside it (the ``image_size`` of :func:`postprocess`).
    """
    h0, w0 = image.shape[:2]
    scale = min(height / h0, width / w0)
    h, w = min(height, round(h0 * scale)), min(width, round(w0 * scale))
    resized = T.ResizeTransform(h0, w0, h, w).apply_image(image)  # (h, w, 3) uint8
    tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)), dtype=torch.float32)
    images = normalize_and_pad(
        [tensor], model.pixel_mean, model.pixel_std, pad_to=(height, width)
    )  # (1, 3, height, width)
    return images.tensor, (h, w)


def postprocess(
    model: nn.Module,
    pred_logits: torch.Tensor | np.ndarray,
    pred_masks: torch.Tensor | np.ndarray,
    *,
    input_size: tuple[int, int],
    image_sizes: Sequence[tuple[int, int]],
    output_sizes: Sequence[tuple[int, int]],
) -> list[dict]:
    """Raw network outputs (eager, ONNX or exported) -> per image the model's results
    ("sem_seg", "panoptic_seg", "instances", as its ``postprocessor`` switches on).

    Args:
        model: the model the network was taken from (its ``postprocessor``).
        pred_logits: (B, Q, K+1); pred_masks: (B, Q, H/s, W/s); tensors or numpy arrays.
        input_size: (H, W) of the network input.
        image_sizes: per image, the (h, w) of its valid part of the input.
        output_sizes: per image, the (height, width) of the results.
    """
    logits = torch.as_tensor(pred_logits, device=model.pixel_mean.device).float()  # (B, Q, K+1)
    masks = torch.as_tensor(pred_masks, device=model.pixel_mean.device).float()  # (B, Q, H/s, W/s)
    with torch.inference_mode():
        return model.postprocessor(
            logits,
            masks,
            padded_size=tuple(input_size),
            image_sizes=list(image_sizes),
            output_sizes=list(output_sizes),
        )


def _example_input(model: nn.Module, height: int, width: int, batch_size: int) -> torch.Tensor:
    fit = round_up_to_divisor((height, width), model.size_divisibility)
    if fit != (height, width):
        raise ValueError(
            f"export size {height}x{width} must be a multiple of the model's size divisibility "
            f"({model.size_divisibility}); e.g. {fit[0]}x{fit[1]}"
        )
    generator = torch.Generator().manual_seed(0)
    images = torch.randn((batch_size, 3, height, width), generator=generator)  # (B, 3, H, W)
    return images.to(model.pixel_mean.device)


def export_onnx(
    model: nn.Module,
    path: str,
    *,
    height: int,
    width: int,
    batch_size: int = 1,
    opset_version: int = 18,
) -> str:
    """Write the network of ``model`` for (batch_size, 3, height, width) inputs as ONNX.

    Inputs "images"; outputs "pred_logits", "pred_masks" (see :class:`InferenceNetwork`).
    Returns ``path``.
    """
    network = InferenceNetwork(model).eval()
    example = _example_input(model, height, width, batch_size)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with ms_deform_attn_impl(model, "pytorch"), _quiet("onnxscript", "onnx_ir"), torch.no_grad():
        program = torch.onnx.export(
            network,
            (example,),
            dynamo=True,
            input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES,
            opset_version=opset_version,
            optimize=True,
            verbose=False,
        )
    program.save(path)
    logger.info("wrote ONNX model for %dx%d inputs to %s", height, width, path)
    return path


def load_onnx(path: str, threads: int = 0):
    """An onnxruntime CPU session of an exported network; ``threads``: intra-op threads (0:
    onnxruntime's default). Its threads do not spin-wait for work after a run, so that they do
    not hold the cores PyTorch runs the post-processing (or another model) on next."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def run_onnx(session, images: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Run an exported network (a :func:`load_onnx` session, or the path of the ``.onnx``
    file) on (B, 3, H, W) normalised images. Returns (pred_logits, pred_masks) numpy arrays."""
    if isinstance(session, (str, os.PathLike)):
        session = load_onnx(os.fspath(session))
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    logits, masks = session.run(OUTPUT_NAMES, {INPUT_NAMES[0]: images.astype(np.float32)})
    return logits, masks


def load_openvino(path: str, threads: int = 0):
    """An exported ONNX network compiled by OpenVINO for the CPU, in float32 (OpenVINO would
    otherwise pick bfloat16 on CPUs that have it) and tuned for latency; ``threads``: inference
    threads (0: OpenVINO's default, all cores)."""
    import openvino
    from openvino import properties
    from openvino.properties import hint

    config = {
        hint.inference_precision: openvino.Type.f32,
        hint.performance_mode: hint.PerformanceMode.LATENCY,
    }
    if threads:
        config[properties.inference_num_threads] = threads
    return openvino.Core().compile_model(path, "CPU", config)


def run_openvino(compiled, images: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Run a :func:`load_openvino` network on (B, 3, H, W) normalised images. Returns
    (pred_logits, pred_masks) numpy arrays (copies, not OpenVINO's reused buffers)."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    outputs = compiled({INPUT_NAMES[0]: images.astype(np.float32)})
    logits, masks = (outputs[compiled.output(name)] for name in OUTPUT_NAMES)
    return logits, masks


def export_torch(
    model: nn.Module, *, height: int, width: int, batch_size: int = 1
) -> torch.export.ExportedProgram:
    """``torch.export`` of the network of ``model`` for (batch_size, 3, height, width) inputs.

    Save it with ``torch.export.save(program, "model.pt2")``; run it with
    ``program.module()(images)`` -> (pred_logits, pred_masks).
    """
    network = InferenceNetwork(model).eval()
    example = _example_input(model, height, width, batch_size)
    with ms_deform_attn_impl(model, "pytorch"), torch.no_grad():
        return torch.export.export(network, (example,))
