"""Mapillary Vistas panoptic: ``mapillary_vistas_panoptic_{train,val}`` (65 classes).

Uses the dataset's own ``panoptic/panoptic_2018.json`` and PNGs, and ``labels/`` for semantics.
"""

from __future__ import annotations

import os

from .common import datasets_root, panoptic_metadata, register_panoptic
from .mapillary_vistas_categories import MAPILLARY_VISTAS_PANOPTIC_CATEGORIES


def _metadata() -> dict:
    meta = panoptic_metadata(MAPILLARY_VISTAS_PANOPTIC_CATEGORIES)
    # As in the official code, thing_classes/colors list all 65 classes (indexed by contiguous id).
    meta["thing_classes"] = meta["stuff_classes"][:]
    meta["thing_colors"] = meta["stuff_colors"][:]
    return meta


def register_all_mapillary_vistas_panoptic(root: str) -> None:
    metadata = _metadata()
    for split, dirname in (("train", "training"), ("val", "validation")):
        base = os.path.join(root, "mapillary_vistas", dirname)
        register_panoptic(
            f"mapillary_vistas_panoptic_{split}",
            metadata,
            image_root=os.path.join(base, "images"),
            panoptic_root=os.path.join(base, "panoptic"),
            panoptic_json=os.path.join(base, "panoptic", "panoptic_2018.json"),
            sem_seg_root=os.path.join(base, "labels"),
            json_file=None,
            evaluator_type="mapillary_vistas_panoptic_seg",
            ignore_label=65,
            label_divisor=1000,
        )


register_all_mapillary_vistas_panoptic(datasets_root())
