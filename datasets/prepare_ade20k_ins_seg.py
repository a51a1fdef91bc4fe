#!/usr/bin/env python3
"""Make ADE20K instance annotations (COCO json, RLE masks) from the instance PNGs.

Reads ``ADEChallengeData2016/images/{training,validation}/*.jpg`` and
``annotations_instance/`` (R = instance class 1..100, G = instance id, 0 = void) and writes
``ade20k_instance_{train,val}.json``. Category ids are the 0-based ADE20K-150 semantic ids of the
100 thing classes, shared with the panoptic annotations.

    python datasets/prepare_ade20k_ins_seg.py [--root DIR]
"""

from __future__ import annotations

import argparse
import glob
import json
import os

import numpy as np
import pycocotools.mask as mask_util
import tqdm
from PIL import Image

from mask2former.data.datasets.ade20k_categories import (
    ADE20K_INSTANCE_CATEGORIES,
    decode_ade20k_instance_png,
)
from mask2former.data.utils import mask_to_xywh


def convert_split(ade_root: str, dirname: str, split: str) -> dict:
    """Write the instance json of one split; returns its content."""
    image_dir = os.path.join(ade_root, "images", dirname)
    images, annotations = [], []
    files = sorted(glob.glob(os.path.join(image_dir, "*.jpg")))
    for path in tqdm.tqdm(files, desc=f"ade20k_instance_{split}"):
        stem = os.path.splitext(os.path.basename(path))[0]
        width, height = Image.open(path).size
        images.append({"id": stem, "file_name": stem + ".jpg", "width": width, "height": height})
        ins_path = os.path.join(ade_root, "annotations_instance", dirname, stem + ".png")
        ins = np.asarray(Image.open(ins_path).convert("RGB"))
        for mask, category_id in decode_ade20k_instance_png(ins, ins_path):
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": stem,
                    "category_id": category_id,
                    "segmentation": rle,
                    "area": int(mask_util.area(rle)),
                    "bbox": mask_to_xywh(mask),
                    "iscrowd": 0,
                }
            )
    data = {"images": images, "annotations": annotations, "categories": ADE20K_INSTANCE_CATEGORIES}
    with open(os.path.join(ade_root, f"ade20k_instance_{split}.json"), "w") as f:
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
