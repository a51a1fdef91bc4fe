"""PASCAL-Context-59 semantic segmentation: ``pascal_context_59_sem_seg_{train,val}``.

59 classes, background is ignored (label 255), as the benchmark SegViT's paper and README
report (the reference's released config trains mmseg's 60-class set with background as a class;
see the README's SegViT section). Layout under ``$DETECTRON2_DATASETS``::

    pascal_ctx_d2/images/{training,validation}/*.jpg
    pascal_ctx_d2/annotations_ctx59/{training,validation}/*.png   uint8 ids 0..58, 255 = ignore

``datasets/prepare_pascal_context.py`` writes it from the official release and VOC 2010.
"""

from __future__ import annotations

import os

from ...data.datasets.common import datasets_root, register_sem_seg

__all__ = ["PASCAL_CONTEXT_59_CLASSES", "register_pascal_context_59"]

# fmt: off
PASCAL_CONTEXT_59_CLASSES = [
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book",
    "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth",
    "computer", "cow", "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food",
    "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person",
    "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign",
    "sky", "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall",
    "water", "window", "wood",
]
# fmt: on


def register_pascal_context_59(root: str) -> None:
    """Register the train and val splits under ``root/pascal_ctx_d2`` (nothing is read)."""
    base = os.path.join(root, "pascal_ctx_d2")
    for name, split in (("train", "training"), ("val", "validation")):
        register_sem_seg(
            f"pascal_context_59_sem_seg_{name}",
            os.path.join(base, "images", split),
            os.path.join(base, "annotations_ctx59", split),
            image_ext="jpg",
            gt_ext="png",
            stuff_classes=list(PASCAL_CONTEXT_59_CLASSES),
            ignore_label=255,
        )


register_pascal_context_59(datasets_root())
