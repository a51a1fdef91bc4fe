"""A checkpointer that never runs code from a checkpoint file and refuses weights that do not fit.

``.pth``/``.pyth`` files are read with ``torch.load(weights_only=True)``. ``.pkl`` files (the
Detectron2 / official Mask2Former model zoo format: a pickled dict whose "model" maps names to
numpy arrays) are read with :class:`RestrictedUnpickler`, which admits only the globals needed to
rebuild numpy arrays and plain containers, so a crafted file cannot run code.

A checkpoint tensor whose shape differs from the model's raises :class:`ValueError` naming every
such key with both shapes, unless ``allow_shape_mismatch`` is set (config key
``MODEL.WEIGHTS_ALLOW_SHAPE_MISMATCH``, e.g. to fine-tune with another number of classes); then
those tensors keep the model's fresh initialisation, named in one warning line.

Checkpoints and ``last_checkpoint`` are written atomically (a temporary file in the same folder,
then a rename), so a process killed while saving leaves the previous checkpoint named by
``last_checkpoint`` and loadable. When resuming, a checkpoint that cannot be read (truncated,
corrupt, missing) is named in a warning and the newest readable checkpoint of the folder is used
instead; if none can be read, resuming stops with :class:`UnreadableCheckpointError` naming each
file and why.
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import zipfile
from typing import IO, Any

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
from detectron2.utils.file_io import PathManager

__all__ = [
    "RestrictedUnpickler",
    "SafeCheckpointer",
    "UnreadableCheckpointError",
    "load_pickle_safely",
]

logger = logging.getLogger(__name__)

# numpy moved numpy.core to numpy._core in 2.0; pickles name either one.
_NUMPY_CORE = "numpy._core" if int(np.__version__.split(".")[0]) >= 2 else "numpy.core"

# (module, name) a pickle may name -> (module, name) that is actually imported.
_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): ("collections", "OrderedDict"),
    # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, "latin1").
    ("_codecs", "encode"): ("_codecs", "encode"),
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
}
for _core in ("numpy.core", "numpy._core"):
    # Protocol 5 rebuilds contiguous arrays from an in-band buffer with numeric._frombuffer.
    for _module, _name in (
        ("multiarray", "_reconstruct"),
        ("multiarray", "scalar"),
        ("numeric", "_frombuffer"),
    ):
        _ALLOWED_GLOBALS[(f"{_core}.{_module}", _name)] = (f"{_NUMPY_CORE}.{_module}", _name)


# What reading a truncated, corrupt or vanished checkpoint file raises (torch.load: RuntimeError
# for a broken zip archive, EOFError / UnpicklingError for a broken legacy pickle).
_READ_ERRORS = (OSError, EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile)


class UnreadableCheckpointError(RuntimeError):
    """No checkpoint of the output folder could be read when resuming."""


class _AtomicFile:
    """``with`` block over ``<path>.tmp`` opened in ``mode``; on a clean exit the file is flushed
    to disk and renamed over ``path`` (the rename too is flushed), otherwise it is removed."""

    def __init__(self, path: str, mode: str):
        self.path, self.tmp = path, path + ".tmp"
        self.file = open(self.tmp, mode)

    def __enter__(self) -> IO:
        return self.file

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is not None:
            self.file.close()
            os.remove(self.tmp)
            return
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)
        folder = os.open(os.path.dirname(self.path) or ".", os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


class _AtomicWrites:
    """Detectron2's PathManager, except that ``open(path, "w"/"wb")`` of a file in a local folder
    is an :class:`_AtomicFile`: readers of ``path`` see the old file or the complete new one.

    fvcore's ``Checkpointer.save`` and ``tag_last_checkpoint`` write through
    ``self.path_manager.open`` in a ``with`` block, so with this path manager both the checkpoint
    and ``last_checkpoint`` are written atomically, the latter only once the former is complete.
    """

    def __init__(self, path_manager):
        self._path_manager = path_manager

    def __getattr__(self, name: str) -> Any:
        return getattr(self._path_manager, name)

    def open(self, path: str, mode: str = "r", **kwargs: Any):
        if mode in ("w", "wb") and not kwargs and os.path.isdir(os.path.dirname(path) or "."):
            return _AtomicFile(path, mode)
        return self._path_manager.open(path, mode, **kwargs)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy-array and plain-container globals.

    Any other global (``os.system``, ``builtins.eval``, a class with a custom ``__reduce__`` ...)
    raises :class:`pickle.UnpicklingError` naming the file and the refused global.
    """

    def __init__(self, file, *, filename: str = "<stream>"):
        super().__init__(file, encoding="latin1")
        self.filename = filename

    def find_class(self, module: str, name: str) -> Any:
        target = _ALLOWED_GLOBALS.get((module, name))
        if target is None:
            raise pickle.UnpicklingError(
                f"Refusing to load {self.filename}: it names the global '{module}.{name}', "
                "which is not a numpy array or plain container. Only numpy-array weight files "
                "are read from .pkl; convert other checkpoints to a .pth state dict."
            )
        return getattr(importlib.import_module(target[0]), target[1])

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError(
            f"Refusing to load {self.filename}: persistent ids are not allowed in .pkl weights."
        )


def load_pickle_safely(filename: str) -> Any:
    """Unpickle ``filename`` with :class:`RestrictedUnpickler`."""
    with PathManager.open(filename, "rb") as f:
        return RestrictedUnpickler(f, filename=filename).load()


def _strip_module_prefix(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Names without the "module." prefix of (Distributed)DataParallel, as fvcore loads them."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return state_dict


class SafeCheckpointer(DetectionCheckpointer):
    """:class:`DetectionCheckpointer` with safe file reading and a strict shape check.

    What is saved and resumed (model, optimizer, scheduler, iteration), how it is written
    (``save``, ``tag_last_checkpoint``) and the model-zoo name-matching heuristics are
    Detectron2's; the writing goes through :class:`_AtomicWrites`, and resuming skips unreadable
    checkpoints (see the module docstring).
    """

    def __init__(self, model, save_dir="", *, allow_shape_mismatch: bool = False, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.allow_shape_mismatch = allow_shape_mismatch
        self.path_manager = _AtomicWrites(self.path_manager)  # Detectron2's saving, atomic
        # (file name, its content) read by resume_or_load before load() reads it again.
        self._read_ahead: tuple[str, dict[str, Any]] | None = None

    def resume_or_load(self, path: str, *, resume: bool = True) -> dict[str, Any]:
        """Detectron2's ``resume_or_load``; when resuming, a checkpoint that cannot be read is
        skipped with a warning for the next newest one (see the module docstring)."""
        if not (resume and self.has_checkpoint()):
            return super().resume_or_load(path, resume=resume)
        last = self.get_checkpoint_file()
        older = [f for f in self._checkpoints_newest_first() if f != last]
        failures = []
        for candidate in [last, *older]:
            try:
                checkpoint = self._torch_load(candidate)  # checkpoints are .pth files
            except _READ_ERRORS as e:
                failures.append(f"  {candidate}: {type(e).__name__}: {e}")
                logger.warning(
                    "Cannot resume from %s (%s: %s); trying the next newest checkpoint.",
                    candidate,
                    type(e).__name__,
                    e,
                )
                continue
            if failures:
                logger.warning(
                    "Resuming from %s: it is the newest readable checkpoint (%s named %s, "
                    "which could not be read).",
                    candidate,
                    os.path.join(self.save_dir, "last_checkpoint"),
                    last,
                )
            self._read_ahead = (candidate, checkpoint)
            try:
                return self.load(candidate)
            finally:
                self._read_ahead = None
        raise UnreadableCheckpointError(
            f"Cannot resume: no checkpoint in {self.save_dir} can be read.\n"
            + "\n".join(failures)
            + "\nRemove the folder's last_checkpoint to start afresh from MODEL.WEIGHTS."
        )

    def _checkpoints_newest_first(self) -> list[str]:
        """The folder's ``.pth`` files, most recently written first."""
        files = self.get_all_checkpoint_files()
        return sorted(files, key=lambda f: (os.path.getmtime(f), f), reverse=True)

    def _torch_load(self, f: str) -> dict[str, Any]:
        if self._read_ahead is not None and self._read_ahead[0] == f:
            return self._read_ahead[1]
        with PathManager.open(f, "rb") as stream:
            return torch.load(stream, map_location="cpu", weights_only=True)

    def _load_file(self, filename: str) -> dict[str, Any]:
        if filename.endswith(".pkl"):
            data = load_pickle_safely(filename)
            if not isinstance(data, dict):
                raise ValueError(f"{filename} holds a {type(data).__name__}, not a dict.")
            if "model" in data and "__author__" in data:
                # Detectron2 model zoo format.
                self.logger.info("Reading a file from '%s'", data["__author__"])
                return data
            # Caffe2 / Detectron1 model zoo format.
            if "blobs" in data:
                data = data["blobs"]
            data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
            return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
        if filename.endswith(".pyth"):
            # pycls format.
            data = self._torch_load(filename)
            if "model_state" not in data:
                raise ValueError(f"{filename}: pycls checkpoints must contain 'model_state'.")
            model_state = {
                k: v
                for k, v in data["model_state"].items()
                if not k.endswith("num_batches_tracked")
            }
            return {"model": model_state, "__author__": "pycls", "matching_heuristics": True}
        return super()._load_file(filename)

    def _load_model(self, checkpoint: dict[str, Any]):
        if checkpoint.get("matching_heuristics", False):
            # Rename checkpoint keys to model keys here (Detectron2 would do it in super()), so
            # the shape check below sees the final names.
            self._convert_ndarray_to_tensor(checkpoint["model"])
            checkpoint["model"] = align_and_update_state_dicts(
                self.model.state_dict(),
                checkpoint["model"],
                c2_conversion=checkpoint.get("__author__", None) == "Caffe2",
            )
            checkpoint["matching_heuristics"] = False
        mismatches = self._shape_mismatches(checkpoint["model"])
        if mismatches:
            lines = "\n".join(
                f"  {key}: {tuple(ckpt)} in the checkpoint, {tuple(model)} in the model"
                for key, ckpt, model in mismatches
            )
            if not self.allow_shape_mismatch:
                raise ValueError(
                    f"{len(mismatches)} checkpoint tensor(s) do not fit the model:\n{lines}\n"
                    "Set MODEL.WEIGHTS_ALLOW_SHAPE_MISMATCH True to skip them (e.g. when "
                    "fine-tuning with another number of classes)."
                )
            logger.warning(
                "Re-initialised %d tensor(s) whose shape differs from the checkpoint "
                "(MODEL.WEIGHTS_ALLOW_SHAPE_MISMATCH): %s",
                len(mismatches),
                "; ".join(
                    f"{key} {tuple(ckpt)} -> {tuple(model)}" for key, ckpt, model in mismatches
                ),
            )
        return super()._load_model(checkpoint)

    def _log_incompatible_keys(self, incompatible) -> None:
        """Detectron2's report of missing and unexpected keys, without the tensors skipped for
        their shape: :meth:`_load_model` has named those in one line."""
        skipped = {key for key, _, _ in incompatible.incorrect_shapes}
        super()._log_incompatible_keys(
            incompatible._replace(
                incorrect_shapes=[],
                missing_keys=[k for k in incompatible.missing_keys if k not in skipped],
            )
        )

    def _shape_mismatches(self, state_dict: dict[str, Any]) -> list[tuple[str, tuple, tuple]]:
        """(key, checkpoint shape, model shape) of every tensor that does not fit.

        A key absent from the model is compared with the model keys ending in ".{key}" that
        the checkpoint does not fill: the name-matching heuristics leave a key unrenamed when
        its shape does not fit.
        """
        model_state = self.model.state_dict()
        state_dict = _strip_module_prefix(state_dict)
        mismatches = []
        for key, value in state_dict.items():
            if not hasattr(value, "shape"):
                continue  # not an array: Detectron2 rejects it with its own error
            shape = tuple(value.shape)
            if key in model_state:
                candidates = [key]
            else:
                candidates = [
                    k for k in model_state if k.endswith("." + key) and k not in state_dict
                ]
            mismatches += [
                (k, shape, tuple(model_state[k].shape))
                for k in candidates
                if isinstance(model_state[k], torch.Tensor)
                and not isinstance(model_state[k], torch.nn.parameter.UninitializedParameter)
                and tuple(model_state[k].shape) != shape
            ]
        return mismatches
