"""Mapillary Vistas semantic segmentation: ``mapillary_vistas_sem_seg_{train,val}`` (65 classes,
ignore label 65). No preprocessing needed."""

from __future__ import annotations

import os

from .common import datasets_root, register_sem_seg
from .mapillary_vistas_categories import MAPILLARY_VISTAS_CATEGORIES


def register_all_mapillary_vistas(root: str) -> None:
    evaluated = MAPILLARY_VISTAS_CATEGORIES[:65]  # "Unlabeled" (65) is the ignore label
    for split, dirname in (("train", "training"), ("val", "validation")):
        base = os.path.join(root, "mapillary_vistas", dirname)
        register_sem_seg(
            f"mapillary_vistas_sem_seg_{split}",
            os.path.join(base, "images"),
            os.path.join(base, "labels"),
            image_ext="jpg",
            gt_ext="png",
            stuff_classes=[c["name"] for c in evaluated],
            stuff_colors=[c["color"] for c in evaluated],
            ignore_label=65,
        )


register_all_mapillary_vistas(datasets_root())
