"""ADE20K instance segmentation: ``ade20k_instance_{train,val}`` (100 thing classes, COCO json).

The json files come from ``datasets/prepare_ade20k_ins_seg.py``; their category ids are the
0-based ADE20K-150 semantic ids of the things.
"""

from __future__ import annotations

import os

from detectron2.data.datasets import load_coco_json

from .ade20k_categories import ADE20K_INSTANCE_CATEGORIES
from .common import datasets_root, register_lazy


def _metadata() -> dict:
    return {
        "thing_classes": [c["name"] for c in ADE20K_INSTANCE_CATEGORIES],
        "thing_dataset_id_to_contiguous_id": {
            c["id"]: i for i, c in enumerate(ADE20K_INSTANCE_CATEGORIES)
        },
    }


def register_all_ade20k_instance(root: str) -> None:
    ade = os.path.join(root, "ADEChallengeData2016")
    for split, dirname in (("train", "training"), ("val", "validation")):
        name = f"ade20k_instance_{split}"
        image_root = os.path.join(ade, "images", dirname)
        json_file = os.path.join(ade, f"ade20k_instance_{split}.json")
        register_lazy(
            name,
            lambda j=json_file, i=image_root, n=name: load_coco_json(j, i, n),
            ("json_file", "image_root"),
            json_file=json_file,
            image_root=image_root,
            evaluator_type="coco",
            **_metadata(),
        )


register_all_ade20k_instance(datasets_root())
