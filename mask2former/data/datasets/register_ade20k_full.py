"""ADE20K-Full semantic segmentation: ``ade20k_full_sem_seg_{train,val}`` (847 classes).

Images and 16-bit TIFF labels (65535 = ignore) come from
``datasets/prepare_ade20k_full_sem_seg.py``. The class list (name and ADE20K full-index id, in
training-id order) is stored in ``ade20k_full_classes.json``.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache

from .common import datasets_root, register_sem_seg

_CLASSES_FILE = os.path.join(os.path.dirname(__file__), "ade20k_full_classes.json")


@lru_cache(maxsize=1)
def ade20k_full_categories() -> list[dict]:
    """The 847 classes as dicts {"name", "id" (ADE20K full index id), "trainId"}."""
    with open(_CLASSES_FILE) as f:
        pairs = json.load(f)
    return [{"name": name, "id": i, "trainId": t} for t, (i, name) in enumerate(pairs)]


def register_all_ade20k_full(root: str) -> None:
    ade = os.path.join(root, "ADE20K_2021_17_01")
    categories = ade20k_full_categories()
    for split, dirname in (("train", "training"), ("val", "validation")):
        register_sem_seg(
            f"ade20k_full_sem_seg_{split}",
            os.path.join(ade, "images_detectron2", dirname),
            os.path.join(ade, "annotations_detectron2", dirname),
            image_ext="jpg",
            gt_ext="tif",
            stuff_classes=[c["name"] for c in categories],
            stuff_dataset_id_to_contiguous_id={c["id"]: c["trainId"] for c in categories},
            ignore_label=65535,  # labels are 16-bit TIFFs
        )


register_all_ade20k_full(datasets_root())
