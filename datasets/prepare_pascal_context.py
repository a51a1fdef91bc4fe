#!/usr/bin/env python3
"""Make PASCAL-Context-59 semantic labels in Detectron2's convention.

Reads the official PASCAL-Context release and the PASCAL VOC 2010 images::

    $DETECTRON2_DATASETS/
      VOCdevkit/VOC2010/JPEGImages/<id>.jpg
      VOCdevkit/VOC2010/ImageSets/Main/{train,val}.txt   # 4998 / 5105 image ids
      pascal_context/trainval/<id>.mat                     # "LabelMap": uint16, 0 = unlabelled,
      pascal_context/labels.txt                            #   else a line "<id>: <name>" here

and writes what ``pascal_context_59_sem_seg_{train,val}`` (registered by
``mask2former.models.segvit``) reads::

    $DETECTRON2_DATASETS/pascal_ctx_d2/
      images/{training,validation}/<id>.jpg
      annotations_ctx59/{training,validation}/<id>.png   # uint8, 0..58, 255 = ignore

Label c (0..58) is the c-th name of ``PASCAL_CONTEXT_59_CLASSES`` (alphabetical, the benchmark's
order); its id in ``labels.txt`` is found by name, so no id table is hard-coded. Every other class
of the full label set and the unlabelled pixels become 255: the 59-class benchmark ignores
"background". A name missing from ``labels.txt``, a split image without a ``.mat`` file, or a
``LabelMap`` whose size differs from its image is an error that names it.

    python datasets/prepare_pascal_context.py [--root DIR] [--voc DIR] [--context DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil

import numpy as np
import scipy.io
import tqdm
from PIL import Image

from mask2former.models.segvit.datasets import PASCAL_CONTEXT_59_CLASSES

IGNORE = 255
SPLITS = {"train": "training", "val": "validation"}
# Spellings of 59-class names in other PASCAL-Context lists (``59_labels.txt``).
ALIASES = {"diningtable": "table", "bedcloth": "bedclothes", "clothes": "cloth"}


def read_label_names(path: str) -> dict[str, int]:
    """``labels.txt`` ("<id>: <name>" per line) -> {name: id}."""
    names = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            key, sep, name = line.partition(":")
            if not sep or not key.strip().isdigit():
                raise ValueError(f"{path}, line {number}: expected '<id>: <name>', got {line!r}")
            name = name.strip()
            names[ALIASES.get(name, name)] = int(key)
    return names


def lookup_table(names: dict[str, int], source: str) -> np.ndarray:
    """(65536,) uint8: full-set id -> 59-class label (255 for every other id and for 0)."""
    missing = [c for c in PASCAL_CONTEXT_59_CLASSES if c not in names]
    if missing:
        raise ValueError(f"{source} has no class named {', '.join(missing)}")
    table = np.full(2**16, IGNORE, dtype=np.uint8)
    for label, name in enumerate(PASCAL_CONTEXT_59_CLASSES):
        table[names[name]] = label
    table[0] = IGNORE  # unlabelled
    return table


def convert(mat_path: str, image_path: str, table: np.ndarray) -> np.ndarray:
    """One ``.mat`` file -> (H, W) uint8 labels, checked against its image's size."""
    mat = scipy.io.loadmat(mat_path)
    if "LabelMap" not in mat:
        raise ValueError(f"'{mat_path}' has no 'LabelMap'")
    label_map = np.asarray(mat["LabelMap"])
    if label_map.ndim != 2 or not np.issubdtype(label_map.dtype, np.integer):
        raise ValueError(
            f"'{mat_path}': LabelMap must be a 2-D integer array, got "
            f"{label_map.dtype} {label_map.shape}"
        )
    with Image.open(image_path) as image:
        width, height = image.size
    if label_map.shape != (height, width):
        raise ValueError(
            f"'{mat_path}': LabelMap is {label_map.shape[1]}x{label_map.shape[0]}, "
            f"its image '{image_path}' {width}x{height}"
        )
    return table[label_map.astype(np.uint16)]  # (H, W) uint8


def read_split(path: str) -> list[str]:
    with open(path) as f:
        return [line.split()[0] for line in f if line.strip()]


def prepare(root: str, voc: str, context: str) -> dict[str, int]:
    """Write ``root/pascal_ctx_d2``; returns the number of images per split."""
    table = lookup_table(
        read_label_names(os.path.join(context, "labels.txt")), os.path.join(context, "labels.txt")
    )
    out = os.path.join(root, "pascal_ctx_d2")
    counts = {}
    for split, folder in SPLITS.items():
        ids = read_split(os.path.join(voc, "ImageSets", "Main", f"{split}.txt"))
        mats = [os.path.join(context, "trainval", f"{i}.mat") for i in ids]
        missing = [m for m in mats if not os.path.isfile(m)]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of the {len(ids)} {split} images have no "
                f"label file, e.g. '{missing[0]}'"
            )
        image_dir = os.path.join(out, "images", folder)
        label_dir = os.path.join(out, "annotations_ctx59", folder)
        os.makedirs(image_dir, exist_ok=True)
        os.makedirs(label_dir, exist_ok=True)
        for image_id, mat in zip(tqdm.tqdm(ids, desc=split), mats):
            image = os.path.join(voc, "JPEGImages", f"{image_id}.jpg")
            labels = convert(mat, image, table)
            Image.fromarray(labels).save(os.path.join(label_dir, f"{image_id}.png"))
            shutil.copyfile(image, os.path.join(image_dir, f"{image_id}.jpg"))
        counts[split] = len(ids)
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--root",
        default=os.getenv("DETECTRON2_DATASETS", "datasets"),
        help="datasets root; output in ROOT/pascal_ctx_d2 " "(default: $DETECTRON2_DATASETS)",
    )
    parser.add_argument(
        "--voc", default="", help="VOC 2010 folder " "(default: ROOT/VOCdevkit/VOC2010)"
    )
    parser.add_argument(
        "--context",
        default="",
        help="PASCAL-Context release with trainval/ and "
        "labels.txt (default: ROOT/pascal_context)",
    )
    args = parser.parse_args(argv)
    voc = args.voc or os.path.join(args.root, "VOCdevkit", "VOC2010")
    context = args.context or os.path.join(args.root, "pascal_context")
    counts = prepare(args.root, voc, context)
    print(f"wrote {counts} images to {os.path.join(args.root, 'pascal_ctx_d2')}")


if __name__ == "__main__":
    main()
