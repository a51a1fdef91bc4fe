#!/usr/bin/env python3
"""Make ADE20K-Full (847 classes) images and labels in Detectron2's layout.

Reads ``ADE20K_2021_17_01/index_ade20k.pkl`` (lists "folder" and "filename") and, per image,
``<folder>/<name>.jpg`` with its ``<name>_seg.png`` (class index = R / 10 * 256 + G). Writes
``ADE20K_2021_17_01/images_detectron2/{training,validation}/<name>.jpg`` and
``annotations_detectron2/.../<name>.tif``: 16-bit training ids 0..846, 65535 = ignore. Images
whose shorter side exceeds 512 are resized to 512 (labels with nearest neighbour).

    python datasets/prepare_ade20k_full_sem_seg.py [--root DIR]
"""

from __future__ import annotations

import argparse
import os
import pickle

import cv2
import numpy as np
import tqdm
from PIL import Image

from mask2former.data.datasets.register_ade20k_full import ade20k_full_categories

MAX_SHORT_SIDE = 512
IGNORE = 65535


def class_index_map(seg_rgb: np.ndarray) -> np.ndarray:
    """ADE20K full class index per pixel from a ``*_seg.png`` array (H, W, 3)."""
    r = seg_rgb[..., 0].astype(np.int32)
    g = seg_rgb[..., 1].astype(np.int32)
    return (r // 10) * 256 + g  # (H, W)


def to_train_ids(class_map: np.ndarray, id_map: dict[int, int]) -> np.ndarray:
    """Map class indices to training ids (uint16, IGNORE for classes outside the 847)."""
    out = np.full(class_map.shape, IGNORE, dtype=np.uint16)  # (H, W)
    for class_id in np.unique(class_map):
        if int(class_id) in id_map:
            out[class_map == class_id] = id_map[int(class_id)]
    return out


def resize_pair(img: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h, w = img.shape[:2]
    if min(h, w) <= MAX_SHORT_SIDE:
        return img, label
    scale = MAX_SHORT_SIDE / min(h, w)
    size = (round(w * scale), round(h * scale))  # (W, H) for cv2
    img = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
    return img, label


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--root",
        default=os.getenv("DETECTRON2_DATASETS", "datasets"),
        help="datasets root holding ADE20K_2021_17_01/ (default: $DETECTRON2_DATASETS)",
    )
    args = parser.parse_args(argv)
    ade = os.path.join(args.root, "ADE20K_2021_17_01")
    with open(os.path.join(ade, "index_ade20k.pkl"), "rb") as f:
        index = pickle.load(f)
    id_map = {c["id"]: c["trainId"] for c in ade20k_full_categories()}
    for kind in ("images_detectron2", "annotations_detectron2"):
        for split in ("training", "validation"):
            os.makedirs(os.path.join(ade, kind, split), exist_ok=True)

    pairs = list(zip(index["folder"], index["filename"]))
    for folder, file_name in tqdm.tqdm(pairs, desc="ade20k_full"):
        split = "validation" if file_name.split("_")[1] == "val" else "training"
        # "folder" is relative to the datasets root, as in the official index.
        image_path = os.path.join(args.root, folder, file_name)
        img = np.asarray(Image.open(image_path).convert("RGB"))
        seg = np.asarray(Image.open(image_path.replace(".jpg", "_seg.png")).convert("RGB"))
        label = to_train_ids(class_index_map(seg), id_map)
        img, label = resize_pair(img, label)
        Image.fromarray(img).save(os.path.join(ade, "images_detectron2", split, file_name))
        tif_name = file_name.replace(".jpg", ".tif")
        Image.fromarray(label).save(os.path.join(ade, "annotations_detectron2", split, tif_name))


if __name__ == "__main__":
    main()
