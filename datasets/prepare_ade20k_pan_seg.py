#!/usr/bin/env python3
"""Make ADE20K panoptic annotations (COCO panoptic format) from the semantic and instance PNGs.

Reads ``ADEChallengeData2016/images/{training,validation}/*.jpg``, ``annotations/`` (semantic,
0 = other, 1..150) and ``annotations_instance/`` (R = instance class 1..100, G = instance id) and
writes ``ade20k_panoptic_{train,val}/*.png`` (segment id = R + 256 G + 256^2 B) and
``ade20k_panoptic_{train,val}.json``. Stuff segments come from the semantic map (one per stuff
class), thing segments from the instance map, pasted over stuff; category ids are the 0-based
ADE20K-150 classes. Segment areas and boxes are measured on the final map.

    python datasets/prepare_ade20k_pan_seg.py [--root DIR]
"""

from __future__ import annotations

import argparse
import glob
import json
import os

import numpy as np
import tqdm
from PIL import Image

from mask2former.data.datasets.ade20k_categories import (
    ADE20K_150_CATEGORIES,
    decode_ade20k_instance_png,
)
from mask2former.data.utils import id2rgb, mask_to_xywh, rgb2id


class SegmentIdAllocator:
    """Unique segment ids of one image: a stuff segment takes its category colour, a thing a
    jittered copy of it (as panopticapi's IdGenerator does), so the PNG is viewable."""

    def __init__(self, seed: int = 0):
        self.used = {0}
        self.rng = np.random.default_rng(seed)

    def new(self, category: dict) -> int:
        base = np.array(category["color"])
        seg_id = rgb2id(base) if not category["isthing"] else 0
        while seg_id in self.used:
            color = np.clip(base + self.rng.integers(-30, 31, size=3), 0, 255)
            seg_id = rgb2id(color)
        self.used.add(seg_id)
        return seg_id


def panoptic_from_ade(sem: np.ndarray, ins: np.ndarray, ins_path: str = ""):
    """(segment-id map (H, W), segments_info) of one image from its raw semantic and instance
    PNG arrays."""
    categories = ADE20K_150_CATEGORIES
    pan = np.zeros(sem.shape, dtype=np.int64)  # (H, W), 0 = void
    ids = SegmentIdAllocator()
    segments = []
    sem_cls = sem.astype(np.int64) - 1  # (H, W), -1 = other
    for c in np.unique(sem_cls):
        if c < 0 or categories[c]["isthing"]:
            continue
        seg_id = ids.new(categories[c])
        pan[sem_cls == c] = seg_id
        segments.append((seg_id, int(c)))
    for mask, c in decode_ade20k_instance_png(ins, ins_path):
        seg_id = ids.new(categories[c])
        pan[mask] = seg_id
        segments.append((seg_id, c))

    segments_info = []
    for seg_id, c in segments:
        mask = pan == seg_id
        if mask.any():  # a stuff segment can be covered entirely by things
            segments_info.append(
                {
                    "id": int(seg_id),
                    "category_id": c,
                    "area": int(mask.sum()),
                    "bbox": mask_to_xywh(mask),
                    "iscrowd": 0,
                }
            )
    return pan, segments_info


def convert_split(ade_root: str, dirname: str, split: str) -> dict:
    """Write the panoptic PNGs and json of one split; returns the json content."""
    image_dir = os.path.join(ade_root, "images", dirname)
    out_dir = os.path.join(ade_root, f"ade20k_panoptic_{split}")
    os.makedirs(out_dir, exist_ok=True)
    images, annotations = [], []
    files = sorted(glob.glob(os.path.join(image_dir, "*.jpg")))
    for path in tqdm.tqdm(files, desc=f"ade20k_panoptic_{split}"):
        stem = os.path.splitext(os.path.basename(path))[0]
        width, height = Image.open(path).size
        sem = np.asarray(Image.open(os.path.join(ade_root, "annotations", dirname, stem + ".png")))
        ins_path = os.path.join(ade_root, "annotations_instance", dirname, stem + ".png")
        ins = np.asarray(Image.open(ins_path).convert("RGB"))
        pan, segments_info = panoptic_from_ade(sem, ins, ins_path)
        Image.fromarray(id2rgb(pan)).save(os.path.join(out_dir, stem + ".png"))
        images.append({"id": stem, "file_name": stem + ".jpg", "width": width, "height": height})
        annotations.append(
            {"image_id": stem, "file_name": stem + ".png", "segments_info": segments_info}
        )
    data = {"images": images, "annotations": annotations, "categories": ADE20K_150_CATEGORIES}
    with open(os.path.join(ade_root, f"ade20k_panoptic_{split}.json"), "w") as f:
        json.dump(data, f)
    return data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--root",
        default=os.getenv("DETECTRON2_DATASETS", "datasets"),
        help="datasets root holding ADEChallengeData2016/ (default: $DETECTRON2_DATASETS)",
    )
    args = parser.parse_args(argv)
    ade_root = os.path.join(args.root, "ADEChallengeData2016")
    for split, dirname in (("train", "training"), ("val", "validation")):
        convert_split(ade_root, dirname, split)


if __name__ == "__main__":
    main()
