#!/usr/bin/env python3
"""Make COCO semantic labels from the panoptic annotations (for semantic evaluation/training).

Reads ``coco/annotations/panoptic_{split}.json`` and ``coco/panoptic_{split}/*.png`` and writes
``coco/panoptic_semseg_{split}/*.png``: uint8, each pixel the contiguous id (0..132, in
Detectron2's ``COCO_CATEGORIES`` order) of its segment's category, 255 where unlabeled.

    python datasets/prepare_coco_semantic_annos_from_panoptic_annos.py [--root DIR]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from multiprocessing import Pool

import numpy as np
import tqdm
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from PIL import Image

from mask2former.data.utils import rgb2id


def panoptic_png_to_semantic(
    panoptic_png: str, out_png: str, segments: list[dict], id_map: dict[int, int]
) -> None:
    """Write the semantic PNG of one panoptic PNG (255 = unlabeled)."""
    pan = rgb2id(np.asarray(Image.open(panoptic_png).convert("RGB")))  # (H, W) segment ids
    sem = np.full(pan.shape, 255, dtype=np.uint8)  # (H, W)
    for seg in segments:
        sem[pan == seg["id"]] = id_map[seg["category_id"]]
    Image.fromarray(sem).save(out_png)


def convert_split(
    panoptic_json: str, panoptic_root: str, sem_seg_root: str, categories, num_workers: int = 0
) -> int:
    """Convert every annotation of ``panoptic_json``; returns the number of PNGs written."""
    id_map = {c["id"]: i for i, c in enumerate(categories)}
    with open(panoptic_json) as f:
        annotations = json.load(f)["annotations"]
    os.makedirs(sem_seg_root, exist_ok=True)
    jobs = [
        (
            os.path.join(panoptic_root, a["file_name"]),
            os.path.join(sem_seg_root, a["file_name"]),
            a["segments_info"],
        )
        for a in annotations
    ]
    work = functools.partial(_run_job, id_map=id_map)
    desc = os.path.basename(sem_seg_root)
    if num_workers > 0:
        with Pool(num_workers) as pool:
            for _ in tqdm.tqdm(
                pool.imap_unordered(work, jobs, chunksize=16), total=len(jobs), desc=desc
            ):
                pass
    else:
        for job in tqdm.tqdm(jobs, desc=desc):
            work(job)
    return len(jobs)


def _run_job(job, id_map):
    panoptic_png_to_semantic(*job, id_map=id_map)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--root",
        default=os.getenv("DETECTRON2_DATASETS", "datasets"),
        help="datasets root holding coco/ (default: $DETECTRON2_DATASETS or ./datasets)",
    )
    parser.add_argument("--splits", nargs="+", default=["val2017", "train2017"])
    parser.add_argument("--num-workers", type=int, default=0, help="processes (0: none)")
    args = parser.parse_args(argv)
    coco = os.path.join(args.root, "coco")
    for split in args.splits:
        convert_split(
            os.path.join(coco, "annotations", f"panoptic_{split}.json"),
            os.path.join(coco, f"panoptic_{split}"),
            os.path.join(coco, f"panoptic_semseg_{split}"),
            COCO_CATEGORIES,
            args.num_workers,
        )


if __name__ == "__main__":
    main()
