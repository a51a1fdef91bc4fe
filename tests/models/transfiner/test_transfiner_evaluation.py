"""Boundary AP (faster-coco-eval's Boundary IoU) on a hand-computed case, and the config switch."""

import numpy as np
import pytest
from pycocotools import mask as mask_util

pytest.importorskip("faster_coco_eval")

from mask2former.models.transfiner.evaluation import evaluate_boundary_ap  # noqa: E402


def _rle(mask: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode()
    return rle


def _case(pred: np.ndarray):
    # one 20x20 image (diagonal 28.3 px, so the boundary width is round(0.02 x 28.3) -> 1 px)
    gt = np.zeros((20, 20), bool)
    gt[5:15, 5:15] = True  # a 10x10 square: its 1-px boundary ring has 36 pixels
    dataset = {
        "images": [{"id": 1, "height": 20, "width": 20}],
        "categories": [{"id": 1, "name": "square"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                         "area": 100, "bbox": [5, 5, 10, 10], "segmentation": _rle(gt)}],
    }
    results = [{"image_id": 1, "category_id": 1, "score": 0.9, "segmentation": _rle(pred)}]
    return evaluate_boundary_ap(dataset, results, dilation_ratio=0.02)


def test_perfect_mask_has_boundary_ap_100():
    gt = np.zeros((20, 20), bool)
    gt[5:15, 5:15] = True
    assert _case(gt)["AP"] == pytest.approx(100.0)


def test_mask_shifted_by_one_pixel():
    # mask IoU 90/110 = 0.82, but the rings share only their top and bottom rows minus one
    # pixel: 18 of 36 + 36 - 18 = 54 -> boundary IoU 1/3 < 0.5: matched at no threshold
    pred = np.zeros((20, 20), bool)
    pred[5:15, 6:16] = True
    assert _case(pred)["AP"] == pytest.approx(0.0)


def test_mask_missing_its_top_row():
    # mask IoU 0.9; rings: GT 36, prediction 34, shared 26 -> boundary IoU 26/44 = 0.59:
    # matched at IoU thresholds 0.50 and 0.55 of the ten -> AP 20
    pred = np.zeros((20, 20), bool)
    pred[6:15, 5:15] = True
    res = _case(pred)
    assert res["AP"] == pytest.approx(20.0)
    assert res["AP50"] == pytest.approx(100.0) and res["AP75"] == pytest.approx(0.0)


def test_boundary_ap_is_selected_by_the_config_key(synthetic_data):
    from detectron2.evaluation import COCOEvaluator

    from mask2former.config import load_config
    from mask2former.models.transfiner.evaluation import (
        BoundaryCOCOEvaluator,
        build_transfiner_evaluator,
    )

    path = "configs/synthetic/instance-segmentation/transfiner_R18_synthetic.yaml"
    plain = build_transfiner_evaluator(load_config(path), "synthetic_val_instance")
    boundary = build_transfiner_evaluator(
        load_config(path, ["MODEL.TRANSFINER.BOUNDARY_AP", "True"]), "synthetic_val_instance"
    )
    assert type(plain) is COCOEvaluator and isinstance(boundary, BoundaryCOCOEvaluator)


def test_boundary_evaluator_end_to_end_with_perfect_predictions(synthetic_data):
    """Perfect predictions of two generated validation images: box, mask and boundary AP 100
    (checks the mapping between contiguous and dataset category ids)."""
    import torch
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.structures import Boxes, Instances

    from mask2former.models.transfiner.evaluation import BoundaryCOCOEvaluator

    name = "synthetic_val_instance"
    mapping = MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id
    evaluator = BoundaryCOCOEvaluator(name, use_fast_impl=False, tasks=("bbox", "segm"))
    evaluator.reset()
    records = DatasetCatalog.get(name)[:2]
    for record in records:
        annos = record["annotations"]
        masks = torch.stack([torch.from_numpy(mask_util.decode(a["segmentation"]).astype(bool))
                             for a in annos])
        inst = Instances((record["height"], record["width"]))
        inst.pred_masks = masks
        inst.pred_boxes = Boxes(torch.tensor([[x, y, x + w, y + h] for x, y, w, h in
                                              (a["bbox"] for a in annos)], dtype=torch.float32))
        inst.scores = torch.ones(len(annos))
        # the loader gives contiguous ids; check both conventions line up
        ids = [a["category_id"] for a in annos]
        if set(ids) <= set(mapping.values()):
            inst.pred_classes = torch.tensor(ids)
        else:
            inst.pred_classes = torch.tensor([mapping[i] for i in ids])
        evaluator.process([{"image_id": record["image_id"]}], [{"instances": inst}])
    res = evaluator.evaluate(img_ids=[r["image_id"] for r in records])
    assert res["segm"]["AP"] == pytest.approx(100.0)
    assert res["boundary"]["AP"] == pytest.approx(100.0)
