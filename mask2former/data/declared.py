"""Datasets declared in the config (``DATASETS.CUSTOM``), registered without writing Python.

A declaration names a dataset, its format and its files::

    DATASETS:
      CUSTOM:
        shapes_train:
          FORMAT: coco_instance            # or coco_panoptic, sem_seg
          JSON_FILE: data/train.json
          IMAGE_ROOT: data/train
      TRAIN: ("shapes_train",)

:func:`register_declared_datasets` registers every declared name (train_net.py, the demo and
``Predictor.from_config`` call it when they load a config). Class names, colours and, for
panoptic data, the thing/stuff split come from the files; the evaluator from the format. The
JSON files are read and checked at once (an error names the config key or the file); images and
label PNGs are checked by :func:`mask2former.data.file_checks.check_declared_files`, before
training.
"""

from __future__ import annotations

import json
import logging
import os

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

from .custom import (
    _check_categories,
    _colors,
    register_coco_instances_dataset,
    register_coco_panoptic_dataset,
    register_semantic_folder,
)

__all__ = ["FORMATS", "declared_datasets", "register_declared_datasets"]

logger = logging.getLogger(__name__)

_KEY = "DATASETS.CUSTOM"

# Format -> (required fields, optional fields) of a declaration.
FORMATS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "coco_instance": (("IMAGE_ROOT", "JSON_FILE"), ()),
    "coco_panoptic": (
        ("IMAGE_ROOT", "PANOPTIC_ROOT", "PANOPTIC_JSON"),
        ("SEM_SEG_ROOT", "JSON_FILE", "IGNORE_LABEL", "LABEL_DIVISOR"),
    ),
    "sem_seg": (
        ("IMAGE_ROOT", "SEM_SEG_ROOT"),
        ("CLASSES", "CATEGORIES_JSON", "IMAGE_EXT", "LABEL_EXT", "IGNORE_LABEL"),
    ),
}
_PATH_FIELDS = ("IMAGE_ROOT", "JSON_FILE", "PANOPTIC_ROOT", "PANOPTIC_JSON", "SEM_SEG_ROOT",
                "CATEGORIES_JSON")
# Metadata key under which a declared dataset keeps its declaration (idempotent registration).
DECLARATION_KEY = "declaration"


def declared_datasets(cfg: CfgNode) -> dict[str, dict]:
    """``{name: declaration}`` of ``cfg.DATASETS.CUSTOM`` (empty if the config has none)."""
    node = cfg.DATASETS.get("CUSTOM", None)
    if not node:
        return {}
    return {str(name): dict(spec) for name, spec in node.items()}


def _validate(name: str, spec: dict) -> dict:
    """The declaration with defaults filled in; ValueError naming the key otherwise."""
    key = f"{_KEY}.{name}"
    if not isinstance(spec, dict):
        raise ValueError(f"{key} must be a mapping of fields (FORMAT, IMAGE_ROOT, ...)")
    fmt = spec.get("FORMAT")
    if fmt not in FORMATS:
        raise ValueError(f"{key}.FORMAT={fmt!r} is not a known format; valid: {sorted(FORMATS)}")
    required, optional = FORMATS[fmt]
    unknown = sorted(set(spec) - {"FORMAT", *required, *optional})
    if unknown:
        raise ValueError(
            f"{key}: unknown field(s) {unknown} for FORMAT {fmt}; valid: "
            f"{sorted(('FORMAT',) + required + optional)}"
        )
    missing = [f for f in required if not spec.get(f)]
    if missing:
        raise ValueError(f"{key}: FORMAT {fmt} needs {[f'{key}.{f}' for f in missing]}")
    spec = dict(spec)
    for field in _PATH_FIELDS:
        if spec.get(field):
            spec[field] = os.path.expanduser(str(spec[field]))
    if fmt == "sem_seg" and bool(spec.get("CLASSES")) == bool(spec.get("CATEGORIES_JSON")):
        raise ValueError(
            f"{key}: FORMAT sem_seg needs exactly one of {key}.CLASSES (class names, in label "
            f"value order) and {key}.CATEGORIES_JSON (a JSON file of categories)"
        )
    return spec


def _semantic_categories(path: str) -> tuple[list[str], list[list[int]] | None]:
    """Class names and colours of a semantic CATEGORIES_JSON: a list of categories, or an
    object with "categories"; each has "id" (the label value), "name" and optionally "color".
    The ids must be 0..K-1: a label PNG stores them as they are."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Categories file '{path}' does not exist")
    if os.path.getsize(path) == 0:
        raise ValueError(f"Categories file '{path}' is empty (0 bytes)")
    try:
        with open(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"Categories file '{path}' is not valid JSON: {e}") from e
    categories = data.get("categories") if isinstance(data, dict) else data
    if not isinstance(categories, list):
        raise ValueError(
            f"Categories file '{path}' must hold a list of categories or an object with "
            "\"categories\""
        )
    _check_categories(categories, path)
    categories = sorted(categories, key=lambda c: c["id"])
    for expected, c in enumerate(categories):
        if c["id"] != expected:
            raise ValueError(
                f"Categories file '{path}': category ids must be contiguous "
                f"0..{len(categories) - 1} (they are the label values of the PNGs), but id "
                f"{expected} is missing (next id: {c['id']!r})"
            )
    return [c["name"] for c in categories], _colors(categories)


def _register_one(name: str, spec: dict) -> None:
    """Register one validated declaration with the helpers of :mod:`.custom`."""
    fmt = spec["FORMAT"]
    if fmt == "coco_instance":
        register_coco_instances_dataset(
            name, spec["JSON_FILE"], spec["IMAGE_ROOT"],
            metadata={"classes_from": spec["JSON_FILE"]},
        )
    elif fmt == "coco_panoptic":
        extra = {"json_file": spec["JSON_FILE"]} if spec.get("JSON_FILE") else {}
        register_coco_panoptic_dataset(
            name, None, spec["IMAGE_ROOT"], spec["PANOPTIC_ROOT"], spec["PANOPTIC_JSON"],
            spec.get("SEM_SEG_ROOT") or None,
            ignore_label=int(spec.get("IGNORE_LABEL", 255)),
            label_divisor=int(spec.get("LABEL_DIVISOR", 1000)),
            classes_from=spec["PANOPTIC_JSON"],
            **extra,
        )
    else:
        if spec.get("CATEGORIES_JSON"):
            classes, colors = _semantic_categories(spec["CATEGORIES_JSON"])
            source = spec["CATEGORIES_JSON"]
        else:
            classes, colors = [str(c) for c in spec["CLASSES"]], None
            source = f"{_KEY}.{name}.CLASSES"
        register_semantic_folder(
            name, spec["IMAGE_ROOT"], spec["SEM_SEG_ROOT"], classes,
            ignore_label=int(spec.get("IGNORE_LABEL", 255)),
            image_ext=spec.get("IMAGE_EXT", ".jpg"),
            gt_ext=spec.get("LABEL_EXT", ".png"),
            classes_from=source,
            **({"stuff_colors": colors} if colors else {}),
        )
    MetadataCatalog.get(name).set(**{DECLARATION_KEY: _frozen(spec)})


def _frozen(spec: dict) -> tuple:
    """A comparable form of a declaration: relative paths resolved against the working
    directory, so that the same text from another directory declares other files."""

    def value(key, v):
        if key in _PATH_FIELDS and v:
            return os.path.abspath(v)
        return tuple(v) if isinstance(v, (list, tuple)) else v

    return tuple(sorted((k, value(k, v)) for k, v in spec.items()))


def register_declared_datasets(cfg: CfgNode) -> list[str]:
    """Register every dataset of ``cfg.DATASETS.CUSTOM``; returns their names.

    Idempotent: a name already registered with the same declaration is left alone; one
    registered from another declaration (an earlier config in this process) is replaced.

    Raises:
        ValueError: a malformed declaration (naming the key), a name that a built-in dataset
            already uses, or a JSON file that is empty, unreadable or inconsistent (naming it).
        FileNotFoundError: a declared file or folder that does not exist (naming it).
    """
    names = []
    for name, raw in declared_datasets(cfg).items():
        spec = _validate(name, raw)
        if name in DatasetCatalog.list():
            previous = MetadataCatalog.get(name).get(DECLARATION_KEY)
            if previous is None:
                raise ValueError(
                    f"{_KEY}.{name}: the name '{name}' is already registered (a built-in "
                    "dataset, or one registered in Python); choose another name"
                )
            if previous == _frozen(spec):
                names.append(name)
                continue
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        try:
            _register_one(name, spec)
        except Exception:
            # Leave nothing half-registered: a corrected declaration can be registered next.
            if name in DatasetCatalog.list():
                DatasetCatalog.remove(name)
            if name in MetadataCatalog.list():
                MetadataCatalog.remove(name)
            raise
        logger.info("Registered dataset '%s' (%s) from %s", name, spec["FORMAT"], _KEY)
        names.append(name)
    return names
