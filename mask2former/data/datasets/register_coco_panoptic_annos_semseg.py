"""COCO panoptic with semantic labels: ``coco_2017_{train,val}_panoptic_with_sem_seg``.

Semantic PNGs ("panoptic_semseg_{train,val}2017") come from
``datasets/prepare_coco_semantic_annos_from_panoptic_annos.py``.
"""

from __future__ import annotations

import os

from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

from .common import datasets_root, panoptic_metadata, register_panoptic


def register_all_coco_panoptic_annos_sem_seg(root: str) -> None:
    metadata = panoptic_metadata(COCO_CATEGORIES)
    for split in ("train", "val"):
        coco = os.path.join(root, "coco")
        register_panoptic(
            f"coco_2017_{split}_panoptic_with_sem_seg",
            metadata,
            image_root=os.path.join(coco, f"{split}2017"),
            panoptic_root=os.path.join(coco, f"panoptic_{split}2017"),
            panoptic_json=os.path.join(coco, "annotations", f"panoptic_{split}2017.json"),
            sem_seg_root=os.path.join(coco, f"panoptic_semseg_{split}2017"),
            json_file=os.path.join(coco, "annotations", f"instances_{split}2017.json"),
            evaluator_type="coco_panoptic_seg",
            ignore_label=255,
            label_divisor=1000,
        )


register_all_coco_panoptic_annos_sem_seg(datasets_root())
