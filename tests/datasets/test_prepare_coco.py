"""datasets/prepare_coco_semantic_annos_from_panoptic_annos.py on a 2-image COCO miniature."""

import json

import numpy as np
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from PIL import Image

from mask2former.data.utils import id2rgb


def test_panoptic_to_semantic(tmp_path, prepare_script):
    coco = tmp_path / "coco"
    (coco / "annotations").mkdir(parents=True)
    (coco / "panoptic_val2017").mkdir()
    # Image 1: a person (COCO id 1 -> 0) and a stuff "wall-other-merged" (id 199 -> 131).
    pan1 = np.zeros((6, 8), np.int64)
    pan1[:3] = 1000
    pan1[3:, :4] = 2000
    # Image 2: a crowd car (id 3 -> 2) and unlabeled pixels.
    pan2 = np.zeros((5, 5), np.int64)
    pan2[1:4, 1:4] = 77
    Image.fromarray(id2rgb(pan1)).save(coco / "panoptic_val2017" / "1.png")
    Image.fromarray(id2rgb(pan2)).save(coco / "panoptic_val2017" / "2.png")
    annotations = [
        {
            "image_id": 1,
            "file_name": "1.png",
            "segments_info": [
                {"id": 1000, "category_id": 1, "iscrowd": 0},
                {"id": 2000, "category_id": 199, "iscrowd": 0},
            ],
        },
        {
            "image_id": 2,
            "file_name": "2.png",
            "segments_info": [{"id": 77, "category_id": 3, "iscrowd": 1}],
        },
    ]
    (coco / "annotations" / "panoptic_val2017.json").write_text(
        json.dumps({"annotations": annotations})
    )

    prepare_script("prepare_coco_semantic_annos_from_panoptic_annos").main(
        ["--root", str(tmp_path), "--splits", "val2017"]
    )

    wall = [c["id"] for c in COCO_CATEGORIES].index(199)
    sem1 = np.asarray(Image.open(coco / "panoptic_semseg_val2017" / "1.png"))
    expected1 = np.full((6, 8), 255, np.uint8)
    expected1[:3] = 0
    expected1[3:, :4] = wall
    assert sem1.dtype == np.uint8 and np.array_equal(sem1, expected1)
    sem2 = np.asarray(Image.open(coco / "panoptic_semseg_val2017" / "2.png"))
    assert (sem2[1:4, 1:4] == 2).all() and sem2.sum() == 9 * 2 + 16 * 255
