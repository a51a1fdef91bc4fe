#!/usr/bin/env python3
"""Make ADE20K-150 semantic labels in Detectron2's convention.

Reads ``ADEChallengeData2016/annotations/{training,validation}/*.png`` (0 = other, 1..150 the
classes) and writes ``ADEChallengeData2016/annotations_detectron2/...``: the value minus one, so
classes are 0..149 and "other" becomes 255 (ignore).

    python datasets/prepare_ade20k_sem_seg.py [--root DIR]
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import tqdm
from PIL import Image


def convert(in_png: str, out_png: str) -> None:
    label = np.asarray(Image.open(in_png))
    if label.dtype != np.uint8 or label.ndim != 2:
        raise ValueError(f"'{in_png}': expected an 8-bit single-channel label image")
    Image.fromarray(label - np.uint8(1)).save(out_png)  # 0 wraps to 255


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--root",
        default=os.getenv("DETECTRON2_DATASETS", "datasets"),
        help="datasets root holding ADEChallengeData2016/ (default: $DETECTRON2_DATASETS)",
    )
    args = parser.parse_args(argv)
    ade = os.path.join(args.root, "ADEChallengeData2016")
    for split in ("training", "validation"):
        in_dir = os.path.join(ade, "annotations", split)
        out_dir = os.path.join(ade, "annotations_detectron2", split)
        os.makedirs(out_dir, exist_ok=True)
        files = sorted(f for f in os.listdir(in_dir) if f.endswith(".png"))
        for name in tqdm.tqdm(files, desc=split):
            convert(os.path.join(in_dir, name), os.path.join(out_dir, name))


if __name__ == "__main__":
    main()
