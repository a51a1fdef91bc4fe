"""Registers the generated dataset (``mask2former.data.synthetic``) for all three tasks.

Names (``{split}`` is ``train`` or ``val``):

- ``synthetic_{split}_panoptic``: panoptic records with semantic labels too, in the format of
  the official ``coco_2017_*_panoptic_with_sem_seg`` (file_name, image_id, pan_seg_file_name,
  sem_seg_file_name, segments_info with contiguous category ids and isthing), evaluator type
  ``coco_panoptic_seg``: PQ, and also AP (``json_file``) and mIoU (``sem_seg_root``).
- ``synthetic_{split}_instance``: the COCO instance json (things only), evaluator type ``coco``.
- ``synthetic_{split}_sem_seg``: semantic PNGs over all classes, evaluator type ``sem_seg``.

Registration only records paths: nothing is generated or read until ``DatasetCatalog.get``.
The root is ``$M2F_SYNTHETIC_ROOT``, else ``$DETECTRON2_DATASETS/generated``; call
``register_all_synthetic(root)`` to point the names at another root.
"""

import json
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json, load_sem_seg

from ..synthetic import (
    IGNORE_LABEL,
    SPLITS,
    SYNTHETIC_CATEGORIES,
    default_synthetic_root,
    split_paths,
)

__all__ = ["get_synthetic_metadata", "load_synthetic_panoptic", "register_all_synthetic"]


def get_synthetic_metadata() -> dict:
    """Class names, colours and id maps, as Detectron2's evaluators and Visualizer read them.

    As in the official COCO panoptic registration, ``stuff_classes`` lists *every* class (the
    semantic label space), and the thing classes come first so that their contiguous ids
    0..#things-1 index ``thing_classes`` too.
    """
    things = [c for c in SYNTHETIC_CATEGORIES if c["isthing"]]
    return {
        "thing_classes": [c["name"] for c in things],
        "thing_colors": [c["color"] for c in things],
        "stuff_classes": [c["name"] for c in SYNTHETIC_CATEGORIES],
        "stuff_colors": [c["color"] for c in SYNTHETIC_CATEGORIES],
        "thing_dataset_id_to_contiguous_id": {
            c["id"]: i for i, c in enumerate(SYNTHETIC_CATEGORIES) if c["isthing"]
        },
        "stuff_dataset_id_to_contiguous_id": {
            c["id"]: i for i, c in enumerate(SYNTHETIC_CATEGORIES)
        },
    }


def load_synthetic_panoptic(root: str, split: str, meta: dict) -> list[dict]:
    """Panoptic-with-semantic records of one split, category ids made contiguous."""
    paths = split_paths(root, split)
    if not os.path.isfile(paths["panoptic_json"]):
        raise FileNotFoundError(
            f"{paths['panoptic_json']} not found: generate the dataset first with "
            f"`python -m mask2former.data.synthetic --root {root}`"
        )
    with open(paths["panoptic_json"]) as f:
        annotations = json.load(f)["annotations"]
    thing_map = meta["thing_dataset_id_to_contiguous_id"]
    stuff_map = meta["stuff_dataset_id_to_contiguous_id"]
    records = []
    for ann in annotations:
        stem = os.path.splitext(ann["file_name"])[0]
        segments_info = []
        for seg in ann["segments_info"]:
            isthing = seg["category_id"] in thing_map
            category_id = (thing_map if isthing else stuff_map)[seg["category_id"]]
            segments_info.append(dict(seg, category_id=category_id, isthing=isthing))
        records.append(
            {
                "file_name": os.path.join(paths["images"], stem + ".jpg"),
                "image_id": ann["image_id"],
                "pan_seg_file_name": os.path.join(paths["panoptic"], ann["file_name"]),
                "sem_seg_file_name": os.path.join(paths["semantic"], stem + ".png"),
                "segments_info": segments_info,
            }
        )
    return records


def _register(name: str, loader, **metadata) -> None:
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(**metadata)


def register_all_synthetic(root: str | None = None) -> None:
    """Register (or re-register) every synthetic dataset name for the data under ``root``."""
    root = root or default_synthetic_root()
    meta = get_synthetic_metadata()
    for split in SPLITS:
        paths = split_paths(root, split)
        common = {"image_root": paths["images"], "ignore_label": IGNORE_LABEL, **meta}
        _register(
            f"synthetic_{split}_panoptic",
            lambda split=split: load_synthetic_panoptic(root, split, meta),
            panoptic_root=paths["panoptic"],
            panoptic_json=paths["panoptic_json"],
            sem_seg_root=paths["semantic"],
            json_file=paths["instances_json"],
            evaluator_type="coco_panoptic_seg",
            label_divisor=1000,
            **common,
        )
        name = f"synthetic_{split}_instance"
        _register(
            name,
            lambda name=name, paths=paths: load_coco_json(
                paths["instances_json"], paths["images"], name
            ),
            json_file=paths["instances_json"],
            evaluator_type="coco",
            **common,
        )
        _register(
            f"synthetic_{split}_sem_seg",
            lambda paths=paths: load_sem_seg(paths["semantic"], paths["images"], "png", "jpg"),
            sem_seg_root=paths["semantic"],
            evaluator_type="sem_seg",
            **common,
        )


register_all_synthetic()
