"""One-call registration of your own datasets, with their files checked up front.

Each helper validates what it is given when called (files exist, the json parses and has the
expected keys, images pair with labels) and raises an error naming the offending file, instead
of failing later inside a data-loader worker.
"""

from __future__ import annotations

import json
import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from .datasets.common import load_panoptic_json, panoptic_metadata

__all__ = [
    "register_coco_instances_dataset",
    "register_semantic_folder",
    "register_coco_panoptic_dataset",
]

logger = logging.getLogger(__name__)

_MAX_LISTED = 10  # unmatched files named in an error message


def _load_json(path: str, required_keys: tuple[str, ...], what: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} '{path}' does not exist")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{what} '{path}' is empty (0 bytes)")
    try:
        with open(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{what} '{path}' is not valid JSON: {e}") from e
    except OSError as e:
        raise ValueError(f"{what} '{path}' cannot be read: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{what} '{path}' must hold a JSON object, got {type(data).__name__}")
    missing = [k for k in required_keys if k not in data]
    if missing:
        raise ValueError(
            f"{what} '{path}' lacks the key(s) {missing} (needs {list(required_keys)})"
        )
    return data


def _check_categories(categories: list, path: str, need: tuple[str, ...] = ("id", "name")) -> None:
    """Every category is a dict with ``need`` and the ids are unique; errors name ``path``."""
    if not categories:
        raise ValueError(f"'{path}' lists no categories")
    seen: set = set()
    for c in categories:
        if not isinstance(c, dict) or any(k not in c for k in need):
            raise ValueError(f"'{path}': every category needs {list(need)}; got {c!r}")
        if c["id"] in seen:
            raise ValueError(f"'{path}': category id {c['id']!r} is listed twice")
        seen.add(c["id"])


def _colors(categories: list[dict]) -> list[list[int]] | None:
    """The RGB "color" of every category, or None when one has none."""
    if all(isinstance(c.get("color"), (list, tuple)) and len(c["color"]) == 3 for c in categories):
        return [[int(v) for v in c["color"]] for c in categories]
    return None


def _check_category_ids_used(
    used: set, known: set, path: str, where: str = "annotations"
) -> None:
    unknown = sorted(used - known)
    if unknown:
        raise ValueError(
            f"'{path}': its {where} use category id(s) {unknown} that are not in its "
            f"categories {sorted(known)}"
        )


def _check_dir(path: str, what: str) -> None:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what} '{path}' is not a folder")


def register_coco_instances_dataset(
    name: str, json_file: str, image_root: str, metadata: dict | None = None
) -> None:
    """Register a COCO-format instance dataset (Detectron2's ``register_coco_instances``).

    The json must exist and hold "images", "annotations" and "categories"; an empty annotation
    list is allowed (with a warning). ``thing_classes`` and ``thing_dataset_id_to_contiguous_id``
    are set at once from the categories (sorted by id), so the class count is known before
    loading.
    """
    data = _load_json(json_file, ("images", "annotations", "categories"), "COCO annotation file")
    _check_dir(image_root, "Image folder")
    if not data["images"]:
        raise ValueError(f"COCO annotation file '{json_file}' lists no images")
    _check_categories(data["categories"], json_file)
    if not data["annotations"]:
        logger.warning(f"Dataset '{name}': '{json_file}' has no annotations")
    _check_category_ids_used(
        {a.get("category_id") for a in data["annotations"]},
        {c["id"] for c in data["categories"]},
        json_file,
    )
    categories = sorted(data["categories"], key=lambda c: c["id"])
    colors = _colors(categories)
    meta = {
        "thing_classes": [c["name"] for c in categories],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(categories)},
        **({"thing_colors": colors} if colors else {}),
        **(metadata or {}),
    }
    register_coco_instances(name, meta, json_file, image_root)


def _stems(folder: str, ext: str) -> dict[str, str]:
    ext = ext if ext.startswith(".") else "." + ext
    return {
        os.path.relpath(os.path.join(d, f), folder)[: -len(ext)]: os.path.join(d, f)
        for d, _, files in os.walk(folder)
        for f in files
        if f.endswith(ext)
    }


def register_semantic_folder(
    name: str,
    image_root: str,
    sem_seg_root: str,
    stuff_classes: list[str],
    ignore_label: int = 255,
    image_ext: str = ".jpg",
    gt_ext: str = ".png",
    **metadata,
) -> None:
    """Register a semantic dataset: ``image_root/<x><image_ext>`` with labels
    ``sem_seg_root/<x><gt_ext>`` (same relative path and stem; subfolders allowed).

    Label images hold class ids 0..len(stuff_classes)-1 and ``ignore_label``. The folders are
    listed now; any image without a label (or label without an image) raises a ValueError that
    lists them.
    """
    _check_dir(image_root, "Image folder")
    _check_dir(sem_seg_root, "Label folder")
    images, labels = _stems(image_root, image_ext), _stems(sem_seg_root, gt_ext)
    no_label = sorted(set(images) - set(labels))
    no_image = sorted(set(labels) - set(images))
    if no_label or no_image:
        raise ValueError(
            f"Dataset '{name}': images and labels do not pair up. "
            f"{len(no_label)} image(s) without a '{gt_ext}' label in '{sem_seg_root}': "
            f"{[images[s] for s in no_label[:_MAX_LISTED]]}; "
            f"{len(no_image)} label(s) without a '{image_ext}' image in '{image_root}': "
            f"{[labels[s] for s in no_image[:_MAX_LISTED]]}"
        )
    if not images:
        raise ValueError(f"Dataset '{name}': no '{image_ext}' images in '{image_root}'")
    records = [{"file_name": images[s], "sem_seg_file_name": labels[s]} for s in sorted(images)]
    DatasetCatalog.register(name, lambda: [dict(r) for r in records])
    MetadataCatalog.get(name).set(
        image_root=image_root,
        sem_seg_root=sem_seg_root,
        stuff_classes=list(stuff_classes),
        ignore_label=ignore_label,
        evaluator_type=metadata.pop("evaluator_type", "sem_seg"),
        **metadata,
    )


def register_coco_panoptic_dataset(
    name: str,
    categories: list[dict] | None,
    image_root: str,
    panoptic_root: str,
    panoptic_json: str,
    sem_seg_root: str | None = None,
    **metadata,
) -> None:
    """Register a COCO-format panoptic dataset.

    Args:
        categories: COCO panoptic categories: dicts with "id", "name", "isthing" and optionally
            "color"; their order gives the contiguous ids (things and stuff together). None:
            the "categories" of ``panoptic_json``.
        image_root, panoptic_root, panoptic_json: images, panoptic PNGs and their json.
        sem_seg_root: optional semantic PNGs (contiguous ids, 255 ignore), named like the
            panoptic PNGs; needed by semantic evaluation.
        metadata: extra metadata (e.g. evaluator_type, label_divisor, json_file: a COCO
            instance json of the things, needed by instance evaluation).
    """
    required = ("annotations",) if categories is not None else ("annotations", "categories")
    data = _load_json(panoptic_json, required, "Panoptic annotation file")
    _check_dir(image_root, "Image folder")
    _check_dir(panoptic_root, "Panoptic PNG folder")
    if sem_seg_root is not None:
        _check_dir(sem_seg_root, "Semantic label folder")
    if not data["annotations"]:
        raise ValueError(f"Panoptic annotation file '{panoptic_json}' has no annotations")
    for ann in data["annotations"]:
        if "file_name" not in ann or "segments_info" not in ann:
            raise ValueError(
                f"Panoptic annotation file '{panoptic_json}': every annotation needs 'file_name' "
                f"and 'segments_info'; image_id {ann.get('image_id')!r} lacks one"
            )
    source = panoptic_json if categories is None else "the given categories"
    if categories is None:
        categories = data["categories"]
    _check_categories(categories, source, ("id", "name", "isthing"))
    colors = _colors(categories) or [[0, 0, 0]] * len(categories)  # colour only for display
    categories = [dict(c, color=color) for c, color in zip(categories, colors)]
    _check_category_ids_used(
        {s["category_id"] for a in data["annotations"] for s in a["segments_info"]},
        {c["id"] for c in categories},
        panoptic_json,
        where="segments_info",
    )
    meta = panoptic_metadata(categories)
    DatasetCatalog.register(
        name,
        lambda: load_panoptic_json(panoptic_json, image_root, panoptic_root, sem_seg_root, meta),
    )
    extra = {"sem_seg_root": sem_seg_root} if sem_seg_root is not None else {}
    MetadataCatalog.get(name).set(
        image_root=image_root,
        panoptic_root=panoptic_root,
        panoptic_json=panoptic_json,
        evaluator_type=metadata.pop("evaluator_type", "coco_panoptic_seg"),
        ignore_label=metadata.pop("ignore_label", 255),
        label_divisor=metadata.pop("label_divisor", 1000),
        **extra,
        **meta,
        **metadata,
    )
