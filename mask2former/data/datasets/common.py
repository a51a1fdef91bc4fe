"""Shared helpers of the built-in dataset registrations.

Registration never touches the disk: a dataset is registered under its official name whether or
not its files exist, and only loading it checks its folders, raising a FileNotFoundError that
names the missing path and points to ``datasets/README.md``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_sem_seg

__all__ = [
    "datasets_root",
    "check_dataset_paths",
    "register_lazy",
    "guard_registered",
    "register_sem_seg",
    "register_panoptic",
    "panoptic_metadata",
    "load_panoptic_json",
]


def datasets_root() -> str:
    """Root of the built-in datasets: ``$DETECTRON2_DATASETS``, default "datasets"."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def check_dataset_paths(name: str, paths: dict[str, str]) -> None:
    """Raise FileNotFoundError for the first of ``paths`` ({role: path}) that does not exist."""
    for role, path in paths.items():
        if path and not os.path.exists(path):
            raise FileNotFoundError(
                f"Dataset '{name}' cannot be loaded: its {role} '{path}' does not exist. "
                f"See datasets/README.md for the expected layout under $DETECTRON2_DATASETS "
                f"(now '{datasets_root()}') and the datasets/prepare_*.py scripts."
            )


def _checked(name: str, loader: Callable[[], list], path_keys: Iterable[str]):
    path_keys = tuple(path_keys)

    def load():
        meta = MetadataCatalog.get(name)
        check_dataset_paths(name, {k: meta.get(k) for k in path_keys})
        return loader()

    return load


def register_lazy(name: str, loader: Callable[[], list], path_keys: Iterable[str], **metadata):
    """Register ``loader`` under ``name`` with ``metadata``; loading first checks that the
    metadata paths named by ``path_keys`` exist."""
    DatasetCatalog.register(name, _checked(name, loader, path_keys))
    MetadataCatalog.get(name).set(**metadata)


def guard_registered(name: str, path_keys: Iterable[str]) -> None:
    """Give a dataset registered elsewhere (a Detectron2 built-in) the same path check."""
    if name not in DatasetCatalog:
        return
    loader = DatasetCatalog[name]  # the registered function (get() would call it)
    DatasetCatalog.remove(name)
    DatasetCatalog.register(name, _checked(name, loader, path_keys))


def register_sem_seg(
    name: str, image_root: str, sem_seg_root: str, image_ext: str, gt_ext: str, **metadata
):
    """Register a semantic dataset of ``image_root/x.{image_ext}`` + ``sem_seg_root/x.{gt_ext}``."""
    register_lazy(
        name,
        lambda: load_sem_seg(sem_seg_root, image_root, gt_ext=gt_ext, image_ext=image_ext),
        ("image_root", "sem_seg_root"),
        image_root=image_root,
        sem_seg_root=sem_seg_root,
        evaluator_type=metadata.pop("evaluator_type", "sem_seg"),
        **metadata,
    )


def panoptic_metadata(categories: list[dict]) -> dict:
    """Class names, colours and id maps of a COCO-format panoptic category list.

    Every category (thing or stuff) gets a contiguous id in list order; the stuff map covers all
    categories so that semantic evaluation sees every class, as in the official code.
    """
    things = [c for c in categories if c["isthing"]]
    return {
        "thing_classes": [c["name"] for c in things],
        "thing_colors": [c["color"] for c in things],
        "stuff_classes": [c["name"] for c in categories],
        "stuff_colors": [c["color"] for c in categories],
        "thing_dataset_id_to_contiguous_id": {
            c["id"]: i for i, c in enumerate(categories) if c["isthing"]
        },
        "stuff_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(categories)},
    }


def load_panoptic_json(
    json_file: str, image_root: str, panoptic_root: str, sem_seg_root: str | None, meta: dict
) -> list[dict]:
    """Detectron2 records of a COCO-format panoptic json.

    Each record has "file_name", "image_id", "pan_seg_file_name", "segments_info" (category ids
    made contiguous, "isthing" added) and, with ``sem_seg_root``, "sem_seg_file_name". The image
    file name comes from the json "images" entry; without one it is the PNG name with ".jpg".
    """
    with open(json_file) as f:
        info = json.load(f)
    image_files = {img["id"]: img["file_name"] for img in info.get("images", [])}
    thing_map = meta["thing_dataset_id_to_contiguous_id"]
    stuff_map = meta["stuff_dataset_id_to_contiguous_id"]

    records = []
    for ann in info["annotations"]:
        stem = os.path.splitext(ann["file_name"])[0]
        segments = []
        for seg in ann["segments_info"]:
            seg = dict(seg)
            cat = seg["category_id"]
            seg["isthing"] = cat in thing_map
            seg["category_id"] = thing_map[cat] if seg["isthing"] else stuff_map[cat]
            segments.append(seg)
        record = {
            "file_name": os.path.join(image_root, image_files.get(ann["image_id"], stem + ".jpg")),
            "image_id": ann["image_id"],
            "pan_seg_file_name": os.path.join(panoptic_root, ann["file_name"]),
            "segments_info": segments,
        }
        if sem_seg_root is not None:
            record["sem_seg_file_name"] = os.path.join(sem_seg_root, stem + ".png")
        records.append(record)
    return records


def register_panoptic(
    name: str,
    metadata: dict,
    image_root: str,
    panoptic_root: str,
    panoptic_json: str,
    sem_seg_root: str | None = None,
    **extra,
):
    """Register a COCO-format panoptic dataset (see :func:`load_panoptic_json`).

    ``metadata`` is :func:`panoptic_metadata` output; ``extra`` adds keys such as
    evaluator_type, ignore_label, label_divisor, json_file.
    """
    path_keys = ["image_root", "panoptic_root", "panoptic_json"]
    if sem_seg_root is not None:
        path_keys.append("sem_seg_root")
        extra["sem_seg_root"] = sem_seg_root
    register_lazy(
        name,
        lambda: load_panoptic_json(
            panoptic_json, image_root, panoptic_root, sem_seg_root, metadata
        ),
        path_keys,
        image_root=image_root,
        panoptic_root=panoptic_root,
        panoptic_json=panoptic_json,
        **extra,
        **metadata,
    )
