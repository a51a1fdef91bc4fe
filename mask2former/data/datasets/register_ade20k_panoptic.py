"""ADE20K panoptic: ``ade20k_panoptic_{train,val}`` (150 classes, 100 things).

Panoptic PNGs/json come from ``datasets/prepare_ade20k_pan_seg.py``, semantic labels from
``prepare_ade20k_sem_seg.py``. Also gives Detectron2's ``ade20k_sem_seg_*`` their colours.
"""

from __future__ import annotations

import os

from detectron2.data import MetadataCatalog

from .ade20k_categories import ADE20K_150_CATEGORIES, ADE20K_COLORS
from .common import datasets_root, panoptic_metadata, register_panoptic


def register_all_ade20k_panoptic(root: str) -> None:
    metadata = panoptic_metadata(ADE20K_150_CATEGORIES)
    ade = os.path.join(root, "ADEChallengeData2016")
    for split, dirname in (("train", "training"), ("val", "validation")):
        register_panoptic(
            f"ade20k_panoptic_{split}",
            metadata,
            image_root=os.path.join(ade, "images", dirname),
            panoptic_root=os.path.join(ade, f"ade20k_panoptic_{split}"),
            panoptic_json=os.path.join(ade, f"ade20k_panoptic_{split}.json"),
            sem_seg_root=os.path.join(ade, "annotations_detectron2", dirname),
            json_file=os.path.join(ade, f"ade20k_instance_{split}.json"),
            evaluator_type="ade20k_panoptic_seg",
            ignore_label=255,
            label_divisor=1000,
        )
    for split in ("train", "val"):
        MetadataCatalog.get(f"ade20k_sem_seg_{split}").set(stuff_colors=ADE20K_COLORS[:])


register_all_ade20k_panoptic(datasets_root())
