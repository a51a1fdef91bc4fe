"""Checks of a declared dataset's images and label files, run before the first iteration.

The JSON files of a declared dataset (``DATASETS.CUSTOM``) are checked when it is registered
(:mod:`mask2former.data.declared`). What needs the image files is checked here, for every
declared dataset in ``DATASETS.TRAIN`` and ``DATASETS.TEST``:

- every image exists and can be read (its header);
- a COCO json's "height"/"width" match its image;
- a label PNG (semantic, panoptic) exists, can be read and has the size of its image;
- a semantic label PNG holds only class ids ``0..K-1`` and the ignore label.

Each problem names the file and the value; up to ``_MAX_LISTED`` of each kind are listed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from .declared import DECLARATION_KEY

__all__ = ["check_declared_files", "dataset_file_problems"]

logger = logging.getLogger(__name__)

_MAX_LISTED = 5  # problems of one kind named in full
_READ_ERRORS = (OSError, SyntaxError, ValueError)


def _size(path: str) -> tuple[int, int]:
    """(height, width) from the file header; OSError/ValueError when unreadable."""
    with Image.open(path) as img:
        return img.height, img.width


class _Problems:
    """Problems grouped by kind; each kind lists its first ``_MAX_LISTED`` and a count."""

    def __init__(self):
        self.by_kind: dict[str, list[str]] = {}

    def add(self, kind: str, message: str) -> None:
        self.by_kind.setdefault(kind, []).append(message)

    def lines(self) -> list[str]:
        out = []
        for messages in self.by_kind.values():
            out += messages[:_MAX_LISTED]
            if len(messages) > _MAX_LISTED:
                out.append(f"... and {len(messages) - _MAX_LISTED} more like the above")
        return out


def _check_image(record: dict, problems: _Problems) -> tuple[int, int] | None:
    path = record["file_name"]
    try:
        size = _size(path)
    except FileNotFoundError:
        problems.add("missing image", f"image '{path}' does not exist")
        return None
    except _READ_ERRORS as e:
        problems.add("unreadable image", f"image '{path}' cannot be read: {e}")
        return None
    declared = (record.get("height"), record.get("width"))
    if None not in declared and tuple(declared) != size:
        problems.add(
            "json size",
            f"image '{path}' is {size[0]}x{size[1]} (HxW) but its json entry says "
            f"{declared[0]}x{declared[1]}",
        )
    return size


def _check_label(
    path: str, what: str, image_path: str, image_size: tuple[int, int] | None,
    problems: _Problems,
) -> np.ndarray | None:
    """Size check of one label PNG; returns its pixels for semantic labels."""
    try:
        with Image.open(path) as img:
            size = (img.height, img.width)
            pixels = np.asarray(img) if what == "semantic label" else None
    except FileNotFoundError:
        problems.add(f"missing {what}", f"{what} '{path}' does not exist")
        return None
    except _READ_ERRORS as e:
        problems.add(f"unreadable {what}", f"{what} '{path}' cannot be read: {e}")
        return None
    if image_size is not None and size != image_size:
        problems.add(
            f"{what} size",
            f"{what} '{path}' is {size[0]}x{size[1]} (HxW) but its image '{image_path}' is "
            f"{image_size[0]}x{image_size[1]}",
        )
    return pixels


def _check_label_values(
    path: str, pixels: np.ndarray, num_classes: int, ignore_label: int, problems: _Problems
) -> None:
    if pixels.ndim != 2:
        problems.add(
            "label channels",
            f"semantic label '{path}' has shape {pixels.shape}; expected one channel of class ids",
        )
        return
    values = np.unique(pixels)
    bad = [int(v) for v in values if not (0 <= v < num_classes or v == ignore_label)]
    if bad:
        problems.add(
            "label values",
            f"semantic label '{path}' holds value(s) {bad}, which are not class ids "
            f"0..{num_classes - 1} nor the ignore label {ignore_label}",
        )


def dataset_file_problems(name: str) -> list[str]:
    """Problems of the files of the registered dataset ``name`` (see the module docstring)."""
    meta = MetadataCatalog.get(name)
    problems = _Problems()
    records = DatasetCatalog.get(name)
    if not records:
        problems.add("empty", f"dataset '{name}' has no images")
    stuff_classes = meta.get("stuff_classes")
    check_values = stuff_classes is not None  # semantic PNGs hold contiguous stuff ids
    ignore_label = meta.get("ignore_label", 255)
    for record in records:
        image_size = _check_image(record, problems)
        if "pan_seg_file_name" in record:
            _check_label(record["pan_seg_file_name"], "panoptic PNG", record["file_name"],
                         image_size, problems)
        if "sem_seg_file_name" in record:
            pixels = _check_label(record["sem_seg_file_name"], "semantic label",
                                  record["file_name"], image_size, problems)
            if pixels is not None and check_values:
                _check_label_values(record["sem_seg_file_name"], pixels, len(stuff_classes),
                                    ignore_label, problems)
    return problems.lines()


def check_declared_files(cfg: CfgNode, names: Iterable[str] | None = None) -> None:
    """Raise ValueError listing the file problems of the declared datasets among ``names``
    (default: ``DATASETS.TRAIN`` and ``DATASETS.TEST``); datasets not declared in the config
    (built-ins, registered in Python) are skipped."""
    if names is None:
        names = list(dict.fromkeys([*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST]))
    lines = []
    for name in names:
        declared = name in DatasetCatalog.list() and MetadataCatalog.get(name).get(DECLARATION_KEY)
        if not declared:
            continue
        found = dataset_file_problems(name)
        lines += [f"dataset '{name}': {line}" for line in found]
        if not found:
            logger.info("Dataset '%s': images and label files checked", name)
    if lines:
        raise ValueError("Dataset files do not fit:\n  - " + "\n  - ".join(lines))
