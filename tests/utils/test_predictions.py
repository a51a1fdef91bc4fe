"""Saved predictions (mask2former.utils.predictions) re-read from their files and scored with
the real evaluators give the metrics of Detectron2's in-memory evaluation of the same outputs.

The outputs are made from the ground truth of a tiny generated val split, with errors put in
(a missed object, a wrong class, shuffled scores) so that no metric is trivially 100.
"""

import copy
import json
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import SemSegEvaluator
from detectron2.structures import BitMasks, Instances
from panopticapi.evaluation import pq_compute
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mask2former.config import load_config
from mask2former.data.datasets.register_synthetic import register_all_synthetic
from mask2former.data.synthetic import generate_synthetic_dataset
from mask2former.data.utils import read_label_map, rgb2id
from mask2former.evaluation import build_evaluator
from mask2former.evaluation.sem_seg_loading import load_sem_seg_labels
from mask2former.utils.predictions import PredictionWriter

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PANOPTIC_CONFIG = os.path.join(
    ROOT, "configs", "synthetic", "panoptic-segmentation", "maskformer2_R18_synthetic.yaml"
)
DATASET = "synthetic_val_panoptic"
NUM_THINGS = 4  # contiguous ids 0-3 are the synthetic thing classes, 4-7 the stuff


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    generate_synthetic_dataset(
        root, num_train=1, num_val=4, min_size=64, max_size=96, progress=False
    )
    register_all_synthetic(root)
    yield DatasetCatalog.get(DATASET), MetadataCatalog.get(DATASET)
    register_all_synthetic()  # point the names back at the default root


def _outputs_from_ground_truth(record: dict, num_classes: int, rng: np.random.Generator) -> dict:
    """Model-style outputs (contiguous ids) that copy the ground truth of ``record`` but miss
    its first thing, give its second thing and its first stuff region a wrong class."""
    gt_ids = rgb2id(np.asarray(Image.open(record["pan_seg_file_name"]).convert("RGB")))
    h, w = gt_ids.shape
    panoptic = np.zeros((h, w), dtype=np.int32)  # 0: void
    segments, masks, classes = [], [], []
    things = [gt for gt in record["segments_info"] if gt["isthing"]]
    stuff = [gt for gt in record["segments_info"] if not gt["isthing"]]
    for gt in record["segments_info"]:
        category = gt["category_id"]
        if things and gt is things[0]:
            continue  # missed
        if len(things) > 1 and gt is things[1]:
            category = (category + 1) % NUM_THINGS  # another thing class
        if gt is stuff[0]:
            category = NUM_THINGS + (category - NUM_THINGS + 1) % (num_classes - NUM_THINGS)
        segment_id = len(segments) + 1
        panoptic[gt_ids == gt["id"]] = segment_id
        segments.append({"id": segment_id, "category_id": category, "isthing": gt["isthing"]})
        if gt["isthing"]:
            masks.append(gt_ids == gt["id"])
            classes.append(category)
    semantic = np.zeros((num_classes, h, w), dtype=np.float32)  # (K, H, W) one-hot scores
    for info in segments:
        semantic[info["category_id"]][panoptic == info["id"]] = 1.0
    instances = Instances((h, w))
    mask_tensor = torch.as_tensor(np.array(masks, dtype=bool).reshape(-1, h, w))  # (N, H, W)
    instances.pred_masks = mask_tensor
    instances.pred_boxes = BitMasks(mask_tensor).get_bounding_boxes()
    instances.scores = torch.as_tensor(rng.uniform(0.3, 1.0, len(masks)), dtype=torch.float32)
    instances.pred_classes = torch.as_tensor(classes, dtype=torch.int64)
    return {
        "panoptic_seg": (torch.as_tensor(panoptic), segments),
        "instances": instances,
        "sem_seg": torch.as_tensor(semantic),
    }


def _score_files(pred_dir: str, records: list[dict], metadata, work_dir: str) -> dict:
    """PQ, mask AP and mIoU computed from the saved files alone."""
    with open(os.path.join(pred_dir, "images.json")) as f:
        images = json.load(f)
    # The writer numbers images 1, 2, ...; the ground truth has its own ids.
    by_name = {os.path.basename(r["file_name"]): r for r in records}
    gt_id = {image["id"]: by_name[image["file_name"]]["image_id"] for image in images}

    with open(os.path.join(pred_dir, "panoptic.json")) as f:
        panoptic = json.load(f)
    for annotation in panoptic["annotations"]:
        annotation["image_id"] = gt_id[annotation["image_id"]]
    pred_json = os.path.join(work_dir, "panoptic_pred.json")
    with open(pred_json, "w") as f:
        json.dump(panoptic, f)
    pq = pq_compute(
        metadata.panoptic_json,
        pred_json,
        gt_folder=metadata.panoptic_root,
        pred_folder=os.path.join(pred_dir, "panoptic"),
    )

    with open(os.path.join(pred_dir, "instances.json")) as f:
        results = json.load(f)
    for result in results:
        result["image_id"] = gt_id[result["image_id"]]
    coco_gt = COCO(metadata.json_file)
    coco_eval = COCOeval(coco_gt, coco_gt.loadRes(results), "segm")
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()

    # Semantic PNGs hold dataset ids: back to contiguous ids, then one-hot scores.
    to_contiguous = metadata.stuff_dataset_id_to_contiguous_id
    num_classes = len(metadata.stuff_classes)
    evaluator = SemSegEvaluator(
        DATASET, distributed=False, output_dir=None, sem_seg_loading_fn=load_sem_seg_labels
    )
    evaluator.reset()
    for image in images:
        stem = os.path.splitext(image["file_name"])[0]
        labels = read_label_map(os.path.join(pred_dir, "semantic", stem + ".png"))
        contiguous = np.vectorize(to_contiguous.__getitem__)(labels)  # (H, W)
        scores = torch.nn.functional.one_hot(torch.as_tensor(contiguous), num_classes)
        record = by_name[image["file_name"]]
        evaluator.process([record], [{"sem_seg": scores.permute(2, 0, 1).float()}])
    miou = evaluator.evaluate()["sem_seg"]["mIoU"]
    return {"PQ": 100 * pq["All"]["pq"], "AP": 100 * coco_eval.stats[0], "mIoU": miou}


def test_saved_predictions_score_as_in_memory_evaluation(dataset, tmp_path):
    records, metadata = dataset
    num_classes = len(metadata.stuff_classes)
    rng = np.random.default_rng(0)
    outputs = [_outputs_from_ground_truth(r, num_classes, rng) for r in records]

    writer = PredictionWriter(output_dir=str(tmp_path / "predictions"), metadata=metadata)
    for record, output in zip(records, outputs):
        writer.add(record["file_name"], output)
    writer.close()

    cfg = load_config(PANOPTIC_CONFIG, ["OUTPUT_DIR", str(tmp_path / "eval")])
    evaluator = build_evaluator(cfg, DATASET, str(tmp_path / "eval"))  # DatasetEvaluators
    evaluator.reset()
    for record, output in zip(records, outputs):
        inputs = {k: record[k] for k in ("file_name", "image_id")}
        # Detectron2's panoptic evaluator rewrites segments_info in place: give it a copy.
        evaluator.process([inputs], [copy.deepcopy(output)])
    in_memory = evaluator.evaluate()
    expected = {
        "PQ": in_memory["panoptic_seg"]["PQ"],
        "AP": in_memory["segm"]["AP"],
        "mIoU": in_memory["sem_seg"]["mIoU"],
    }

    from_files = _score_files(str(tmp_path / "predictions"), records, metadata, str(tmp_path))
    for metric, value in expected.items():
        # The errors put in keep every metric away from both ends.
        assert 5 < value < 95, (metric, value)
        assert from_files[metric] == pytest.approx(value, abs=1e-6), (metric, from_files, expected)
