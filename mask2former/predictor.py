"""Inference with a trained model: images (arrays or files) in, Detectron2-standard results out.

    predictor = Predictor.from_config_file(
        "configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml",
        weights="model_final.pth",
        batch_size=4,
    )
    result = predictor("photo.jpg")  # or an (H, W, 3) uint8 array, or a list of either
    panoptic_seg, segments_info = result["panoptic_seg"]

The predictor is apart from the model (as segment-anything's): it reads and resizes the images
as Detectron2's ``DefaultPredictor`` does (``ResizeShortestEdge`` to ``INPUT.MIN_SIZE_TEST`` /
``INPUT.MAX_SIZE_TEST``), then runs the package's one inference path
(:mod:`mask2former.modeling.inference`): ``normalize_and_pad``, the model's network in batches
in the chosen backend, and its ``postprocessor`` in float32 PyTorch. Any model family that
meets that inference contract works here.

Backends (``backend=``, :mod:`mask2former.backends`): "eager" PyTorch (optionally under
``torch.autocast``), "compile" (``torch.compile``), "onnxruntime" and "openvino" (the network
exported to ONNX once per padded input shape, then cached), or "auto" (the default): the
fastest one installed, in the measured order of ``mask2former.backends.AUTO_ORDER``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import Metadata, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from torch import nn

from .backends import (
    EXPORTED,
    ExportFailedError,
    check_backend,
    choose_backend,
    default_backend,
    make_network,
)
from .config import adjust_for_device, load_config
from .data.declared import register_declared_datasets
from .data.utils import read_image_checked
from .modeling.inference import InferenceNetwork, normalize_and_pad, round_up_to_divisor
from .utils.checkpoint import SafeCheckpointer

__all__ = ["Predictor", "load_weights"]

logger = logging.getLogger(__name__)

ImageInput = np.ndarray | str | os.PathLike
_DTYPES = {
    None: None,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
_FORMATS = ("RGB", "BGR")


def load_weights(model: nn.Module, weights: str, *, allow_shape_mismatch: bool = False) -> None:
    """Load a .pth / .pkl checkpoint into ``model`` with :class:`SafeCheckpointer`.

    Raises:
        FileNotFoundError: a local ``weights`` file that does not exist (named in the message).
        ValueError: tensors whose shapes do not fit the model (all named, with both shapes).
    """
    if "://" not in weights and not os.path.isfile(weights):
        raise FileNotFoundError(f"Weights file not found: '{weights}'")
    try:
        SafeCheckpointer(model, allow_shape_mismatch=allow_shape_mismatch).load(weights)
    except ValueError as e:
        raise ValueError(f"Weights '{weights}' do not fit the config's model: {e}") from e


def _as_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if isinstance(dtype, torch.dtype) or dtype is None:
        if dtype not in _DTYPES.values():
            raise ValueError(f"dtype must be one of {sorted(k for k in _DTYPES if k)}, got {dtype}")
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(k for k in _DTYPES if k)}, got {dtype!r}")
    return _DTYPES[dtype]


class Predictor:
    """Runs a MaskFormer model on images; see the module docstring.

    An image's result does not depend on the other images of the call: the model does not mask
    batch padding (neither does the official one), so only images that pad to the same size
    (their resized size rounded up to the model's size divisibility) share a forward pass, in
    chunks of ``batch_size``. Frames of a video, or photographs of one camera, batch fully.

    Args:
        model: a model that meets the inference contract
            (:class:`~mask2former.modeling.inference.InferenceModel`); put in eval mode here.
            A Detectron2 model without ``forward_network`` (an R-CNN family) runs its own eval
            forward on the resized images instead (backend "eager" only then).
        resize: the test-time resize (``ResizeShortestEdge``), or None to keep the input size.
        input_format: channel order the model expects ("RGB" or "BGR", ``INPUT.FORMAT``).
        batch_size: images per forward pass.
        dtype: None / torch.float32 for plain float32, or torch.bfloat16 / torch.float16 to run
            the network under ``torch.autocast`` (on the CPU bfloat16 is the useful one; the
            deformable-attention pixel decoder stays float32), with the eager and compile
            backends only. Post-processing is float32.
        backend: where the network (backbone, pixel and transformer decoders) runs:
            "eager", "compile" (``torch.compile``), "onnxruntime", "openvino", or "auto": the
            first of ``mask2former.backends.AUTO_ORDER`` (fastest first, measured) that is
            installed and applies (a model without ``forward_network``, one on a GPU or a
            reduced ``dtype`` leave "eager" / "compile"); the choice and its reason are
            logged. None: ``$M2F_PREDICTOR_BACKEND``, else "auto". "compile" compiles, and
            "onnxruntime" / "openvino" export the network to ONNX, at the first call of each
            padded input shape (batch, height, width): slow once (tens of seconds for R50),
            cached afterwards (fixed-shape graphs: the model bakes feature sizes into the
            graph). Outputs agree with eager within 1e-3.
        compile: same as ``backend="compile"`` (kept for existing callers).
        metadata: the dataset's metadata (class names, colours, id maps), kept as
            ``self.metadata`` for drawing and writing results; :meth:`from_config` takes that
            of ``DATASETS.TEST[0]`` (declared in ``DATASETS.CUSTOM`` or registered).
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        resize: T.Augmentation | None,
        input_format: str,
        batch_size: int = 1,
        dtype: torch.dtype | str | None = None,
        backend: str | None = None,
        compile: bool = False,
        metadata: Metadata | None = None,
    ):
        if input_format not in _FORMATS:
            raise ValueError(f"input_format must be one of {_FORMATS}, got {input_format!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.metadata = metadata
        self.resize = resize
        self.input_format = input_format
        self.batch_size = batch_size
        self.dtype = _as_dtype(dtype)
        # Models without the contract's network (e.g. R-CNN families) run their own eval forward.
        self.network = (
            InferenceNetwork(self.model).eval() if hasattr(model, "forward_network") else None
        )
        if compile:
            if backend not in (None, "compile"):
                raise ValueError(f"compile=True contradicts backend={backend!r}")
            backend = "compile"
        self.requested_backend = default_backend() if backend is None else backend
        self._excluded: list[str] = []
        if self.requested_backend == "auto":
            self._use_backend(*choose_backend(self.model, self.device, self.dtype))
        else:
            check_backend(self.requested_backend, self.model, self.device, self.dtype)
            self._use_backend(self.requested_backend, "requested")

    def _use_backend(self, backend: str, reason: str) -> None:
        logger.info("Predictor backend: %s (%s)", backend, reason)
        self.backend = backend
        self._forward = None if self.network is None else make_network(backend, self.network)

    def _network(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, H_pad, W_pad) -> (pred_logits, pred_masks) in the backend; under
        "auto", when the ONNX export fails, the next backend that does not need it takes over."""
        while True:
            try:
                return self._forward(images)
            except ExportFailedError as e:
                if self.requested_backend != "auto":
                    raise
                self._excluded += [b for b in EXPORTED if b not in self._excluded]
                logger.warning("%s; falling back", e)
                backend, reason = choose_backend(
                    self.model, self.device, self.dtype, exclude=self._excluded
                )
                self._use_backend(backend, f"{reason}; the ONNX export failed")

    @classmethod
    def from_config(cls, cfg: CfgNode, *, weights: str | None = None, **kwargs: Any) -> Predictor:
        """Build the model of ``cfg`` and load ``weights`` (default ``cfg.MODEL.WEIGHTS``; empty:
        keep the random initialisation). ``kwargs``: ``batch_size``, ``dtype``, ``backend``
        (see the class), ``metadata``.

        A CUDA ``MODEL.DEVICE`` falls back to the CPU when CUDA is absent (with a warning).
        Datasets declared in ``DATASETS.CUSTOM`` are registered; the predictor's ``metadata``
        is that of ``DATASETS.TEST[0]`` (None without one).
        """
        register_declared_datasets(cfg)
        metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0]) if cfg.DATASETS.TEST else None
        cfg = cfg.clone()
        cfg.defrost()
        for note in adjust_for_device(cfg):
            logger.warning(note)
        if weights is not None:
            cfg.MODEL.WEIGHTS = weights
        model = build_model(cfg)
        if cfg.MODEL.WEIGHTS:
            load_weights(
                model,
                cfg.MODEL.WEIGHTS,
                allow_shape_mismatch=cfg.MODEL.WEIGHTS_ALLOW_SHAPE_MISMATCH,
            )
        else:
            logger.warning("MODEL.WEIGHTS is empty: the model keeps its random initialisation")
        resize = None
        if cfg.INPUT.MIN_SIZE_TEST > 0:
            min_size = cfg.INPUT.MIN_SIZE_TEST
            resize = T.ResizeShortestEdge([min_size, min_size], cfg.INPUT.MAX_SIZE_TEST)
        kwargs.setdefault("metadata", metadata)
        return cls(model=model, resize=resize, input_format=cfg.INPUT.FORMAT, **kwargs)

    @classmethod
    def from_config_file(
        cls,
        config_file: str,
        *,
        weights: str | None = None,
        opts: Sequence[str] = (),
        **kwargs: Any,
    ) -> Predictor:
        """:meth:`from_config` of ``config_file`` with the ``opts`` overrides (KEY VALUE ...)."""
        return cls.from_config(load_config(config_file, opts), weights=weights, **kwargs)

    @property
    def device(self) -> torch.device:
        return self.model.pixel_mean.device

    def _load(self, image: ImageInput, format: str) -> np.ndarray:
        """One input -> (H, W, 3) uint8 in the model's input format."""
        if isinstance(image, (str, os.PathLike)):
            return read_image_checked(os.fspath(image), format=self.input_format)
        if not isinstance(image, np.ndarray):
            raise TypeError(
                f"an image must be a numpy array or a file path, got {type(image).__name__}"
            )
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"an image array must be (H, W, 3) uint8, got {image.shape} {image.dtype}"
            )
        return np.ascontiguousarray(image[..., ::-1]) if format != self.input_format else image

    def _to_input(self, image: np.ndarray) -> dict:
        height, width = image.shape[:2]
        if self.resize is not None:
            image = self.resize.get_transform(image).apply_image(image)
        # (H, W, 3) -> (3, H, W) float32 in 0-255
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)).astype("float32"))
        return {"image": tensor, "height": height, "width": width}

    def _padded_size(self, inputs: dict) -> tuple[int, int]:
        return round_up_to_divisor(inputs["image"].shape[-2:], self.model.size_divisibility)

    def _autocast(self):
        if self.dtype is None or self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def _run_batch(self, inputs: list[dict]) -> list[dict]:
        if self.network is None:
            with self._autocast():
                return self.model(inputs)
        images = normalize_and_pad(
            [x["image"] for x in inputs],
            self.model.pixel_mean,
            self.model.pixel_std,
            size_divisibility=self.model.size_divisibility,
        )  # (B, 3, H_pad, W_pad)
        with self._autocast():
            pred_logits, pred_masks = self._network(images.tensor)
        return self.model.postprocessor(
            pred_logits.float(),  # (B, Q, K+1)
            pred_masks.float(),  # (B, Q, H_pad/4, W_pad/4)
            padded_size=tuple(images.tensor.shape[-2:]),
            image_sizes=images.image_sizes,
            output_sizes=[(x["height"], x["width"]) for x in inputs],
        )

    @torch.inference_mode()
    def __call__(
        self, images: ImageInput | Sequence[ImageInput], *, format: str = "RGB"
    ) -> dict | list[dict]:
        """Predict one image or a list of images.

        Args:
            images: an (H, W, 3) uint8 array in ``format``, an image file path (read with
                :func:`~mask2former.data.utils.read_image_checked`), or a list of these.
            format: channel order of the arrays, "RGB" (PIL, scikit-image) or "BGR" (OpenCV).

        Returns:
            For one image a dict, for a list a list of dicts (in input order), with what the
            config's TEST flags switch on, at the input image's size: "sem_seg" (K, H, W)
            scores, "panoptic_seg" ((H, W) int32 ids, segments_info), "instances"
            (pred_masks, pred_boxes from the masks, scores, pred_classes).

        Raises:
            FileNotFoundError: a path that does not exist. ValueError: a file that cannot be
            decoded, or an array that is not (H, W, 3) uint8.
        """
        if format not in _FORMATS:
            raise ValueError(f"format must be one of {_FORMATS}, got {format!r}")
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        inputs = [self._to_input(self._load(image, format)) for image in items]

        groups: dict[tuple[int, int], list[int]] = {}
        for index, x in enumerate(inputs):
            groups.setdefault(self._padded_size(x), []).append(index)
        results: list[dict | None] = [None] * len(inputs)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                for index, result in zip(chunk, self._run_batch([inputs[i] for i in chunk])):
                    results[index] = result
        return results[0] if single else results
