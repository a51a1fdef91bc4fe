"""COCO-Stuff-10k semantic segmentation: ``coco_2017_{train,test}_stuff_10k_sem_seg`` (171 classes:
80 things + 91 stuff). Labels are contiguous ids 0..170, 255 = ignore."""

from __future__ import annotations

import os

from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

from .common import datasets_root, register_sem_seg

# fmt: off
# COCO-Stuff stuff classes, dataset ids 92..182 in order.
_STUFF_NAMES = [
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage",
    "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds",
    "counter", "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence",
    "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog",
    "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house",
    "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net",
    "paper", "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield",
    "railing", "railroad", "river", "road", "rock", "roof", "rug", "salad", "sand", "sea",
    "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone", "straw",
    "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable",
    "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
]
# fmt: on

COCO_STUFF_171_CATEGORIES = [
    {"id": c["id"], "name": c["name"]} for c in COCO_CATEGORIES if c["isthing"]
] + [{"id": 92 + i, "name": name} for i, name in enumerate(_STUFF_NAMES)]


def register_all_coco_stuff_10k(root: str) -> None:
    base = os.path.join(root, "coco", "coco_stuff_10k")
    for split in ("train", "test"):
        register_sem_seg(
            f"coco_2017_{split}_stuff_10k_sem_seg",
            os.path.join(base, "images_detectron2", split),
            os.path.join(base, "annotations_detectron2", split),
            image_ext="jpg",
            gt_ext="png",
            stuff_classes=[c["name"] for c in COCO_STUFF_171_CATEGORIES],
            stuff_dataset_id_to_contiguous_id={
                c["id"]: i for i, c in enumerate(COCO_STUFF_171_CATEGORIES)
            },
            ignore_label=255,
        )


register_all_coco_stuff_10k(datasets_root())
