"""InstanceSegEvaluator on a panoptic-style dataset whose thing ids are not 0..#things-1."""

import json

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances
from pycocotools import mask as mask_util

from mask2former.evaluation.instance_evaluation import InstanceSegEvaluator

# Contiguous ids over all classes: 0 stuff, 1 thing (dataset id 10), 2 stuff, 3 thing (id 30).
THING_IDS = {10: 1, 30: 3}
NAME = "test_instance_evaluation_toy"


def _masks():
    a = np.zeros((32, 32), np.uint8)
    a[2:12, 3:15] = 1
    b = np.zeros((32, 32), np.uint8)
    b[16:30, 10:28] = 1
    return [(a, 10), (b, 30)]


@pytest.fixture
def dataset(tmp_path):
    annotations = []
    for i, (mask, category_id) in enumerate(_masks(), start=1):
        rle = mask_util.encode(np.asfortranarray(mask))
        rle["counts"] = rle["counts"].decode()
        ys, xs = np.nonzero(mask)
        annotations.append({
            "id": i, "image_id": 1, "category_id": category_id, "segmentation": rle,
            "area": int(mask.sum()), "iscrowd": 0,
            "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1],
        })
    coco = {
        "images": [{"id": 1, "width": 32, "height": 32, "file_name": "x.jpg"}],
        "annotations": annotations,
        "categories": [{"id": 10, "name": "ten"}, {"id": 30, "name": "thirty"}],
    }
    json_file = tmp_path / "instances.json"
    json_file.write_text(json.dumps(coco))
    DatasetCatalog.register(NAME, lambda: [])
    MetadataCatalog.get(NAME).set(
        json_file=str(json_file), thing_classes=["ten", "thirty"],
        thing_dataset_id_to_contiguous_id=THING_IDS, evaluator_type="ade20k_panoptic_seg",
    )
    yield NAME
    DatasetCatalog.remove(NAME)
    MetadataCatalog.remove(NAME)


def _prediction(classes):
    masks = torch.stack([torch.from_numpy(m).bool() for m, _ in _masks()])  # (2, 32, 32)
    instances = Instances((32, 32))
    instances.pred_masks = masks
    instances.pred_boxes = Boxes(torch.zeros(2, 4))
    instances.scores = torch.tensor([0.9, 0.8])
    instances.pred_classes = torch.tensor(classes)
    return [{"instances": instances}]


def _evaluate(name, classes, tmp_path):
    evaluator = InstanceSegEvaluator(name, tasks=("segm",), distributed=False,
                                     output_dir=str(tmp_path))
    evaluator.reset()
    evaluator.process([{"image_id": 1}], _prediction(classes))
    return evaluator.evaluate()["segm"]


def test_contiguous_ids_map_back_to_dataset_ids(dataset, tmp_path):
    # Predictions carry contiguous ids over all classes (things 1 and 3).
    assert _evaluate(dataset, [1, 3], tmp_path)["AP"] == pytest.approx(100.0)
    results = json.loads((tmp_path / "coco_instances_results.json").read_text())
    assert sorted(r["category_id"] for r in results) == [10, 30]
    # Swapped classes: the masks no longer match their categories.
    assert _evaluate(dataset, [3, 1], tmp_path)["AP"] == pytest.approx(0.0)


def test_non_thing_class_is_an_error(dataset, tmp_path):
    with pytest.raises(ValueError, match="class 2, which is not a thing class"):
        _evaluate(dataset, [1, 2], tmp_path)
