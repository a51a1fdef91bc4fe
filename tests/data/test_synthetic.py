"""The generated dataset: determinism, valid formats, registration, and evaluation of the truth."""

import hashlib
import json
import os

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator, COCOPanopticEvaluator, SemSegEvaluator
from detectron2.structures import BitMasks, Instances
from panopticapi.utils import rgb2id
from PIL import Image
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from mask2former.data.datasets.register_synthetic import register_all_synthetic
from mask2former.data.synthetic import (
    MAX_HIDDEN,
    SYNTHETIC_CATEGORIES,
    THING_HUES,
    _place_thing,
    draw_sample,
    generate_synthetic_dataset,
    is_split_complete,
    split_paths,
)

NUM_TRAIN, NUM_VAL = 4, 3
CONTIGUOUS = {c["id"]: i for i, c in enumerate(SYNTHETIC_CATEGORIES)}
THING_IDS = {c["id"] for c in SYNTHETIC_CATEGORIES if c["isthing"]}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    generate_synthetic_dataset(root, NUM_TRAIN, NUM_VAL, seed=3, progress=False)
    register_all_synthetic(root)
    yield root
    register_all_synthetic()  # point the names back at the default root


def _digest(folder: str) -> dict[str, str]:
    digests = {}
    for base, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                digests[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return digests


def test_same_seed_same_bytes(root, tmp_path):
    other = str(tmp_path / "again")
    generate_synthetic_dataset(other, NUM_TRAIN, NUM_VAL, seed=3, progress=False)
    assert _digest(root) == _digest(other)
    different = str(tmp_path / "seed4")
    generate_synthetic_dataset(different, NUM_TRAIN, NUM_VAL, seed=4, progress=False)
    assert _digest(root).keys() == _digest(different).keys()
    assert _digest(root) != _digest(different)


def test_complete_split_is_skipped_and_changed_params_redo_it(root, tmp_path):
    path = str(tmp_path / "d")
    generate_synthetic_dataset(path, 2, 1, progress=False)
    done = split_paths(path, "train")["done"]
    stamp = os.stat(done).st_mtime_ns
    generate_synthetic_dataset(path, 2, 1, progress=False)
    assert os.stat(done).st_mtime_ns == stamp
    generate_synthetic_dataset(path, 3, 1, progress=False)
    assert len(os.listdir(split_paths(path, "train")["images"])) == 3
    assert is_split_complete(path, "val") and not is_split_complete(path, "test")
    assert not [n for n in os.listdir(path) if n.startswith(".")]  # no temporary folder left


@pytest.mark.parametrize("split, num", [("train", NUM_TRAIN), ("val", NUM_VAL)])
def test_formats_agree(root, split, num):
    paths = split_paths(root, split)
    with open(paths["panoptic_json"]) as f:
        panoptic = json.load(f)
    coco = COCO(paths["instances_json"])
    assert len(panoptic["annotations"]) == len(coco.getImgIds()) == num
    assert sorted(coco.getCatIds()) == sorted(THING_IDS)

    for ann in panoptic["annotations"]:
        stem = os.path.splitext(ann["file_name"])[0]
        image = cv2.imread(os.path.join(paths["images"], stem + ".jpg"))
        pan = rgb2id(cv2.imread(os.path.join(paths["panoptic"], ann["file_name"]))[..., ::-1])
        sem = cv2.imread(os.path.join(paths["semantic"], stem + ".png"), cv2.IMREAD_UNCHANGED)
        assert image.shape[:2] == pan.shape == sem.shape
        assert 192 <= min(pan.shape) and max(pan.shape) <= 256

        # Panoptic PNG ids are exactly the JSON segments (plus void 0).
        segments = {s["id"]: s for s in ann["segments_info"]}
        assert set(np.unique(pan)) - {0} == set(segments)
        # Semantic PNG = contiguous class of each panoptic segment; void -> 255.
        assert (sem[pan == 0] == 255).all()
        for seg_id, seg in segments.items():
            mask = pan == seg_id
            assert mask.sum() == seg["area"]
            assert (sem[mask] == CONTIGUOUS[seg["category_id"]]).all()

        # Instance masks are the panoptic thing segments, pixel for pixel.
        things = [s for s in segments.values() if s["category_id"] in THING_IDS]
        inst = coco.loadAnns(coco.getAnnIds(imgIds=[ann["image_id"]]))
        assert len(inst) == len(things) and len(things) > 0
        for a in inst:
            mask = coco.annToMask(a).astype(bool)
            matches = [s for s in things if (pan[mask] == s["id"]).all()]
            assert len(matches) == 1 and matches[0]["area"] == a["area"] == mask.sum()
            assert matches[0]["category_id"] == a["category_id"]
            assert a["bbox"] == matches[0]["bbox"]
            assert mask_util.area(a["segmentation"]) == a["area"]


def test_registered_datasets_load(root):
    pan = DatasetCatalog.get("synthetic_val_panoptic")
    assert len(pan) == NUM_VAL
    rec = pan[0]
    assert {"file_name", "image_id", "pan_seg_file_name", "sem_seg_file_name"} <= rec.keys()
    for path in (rec["file_name"], rec["pan_seg_file_name"], rec["sem_seg_file_name"]):
        assert os.path.isfile(path)
    for seg in rec["segments_info"]:
        assert 0 <= seg["category_id"] < len(SYNTHETIC_CATEGORIES)
        assert seg["isthing"] == (seg["category_id"] < len(THING_IDS))

    inst = DatasetCatalog.get("synthetic_train_instance")
    assert len(inst) == NUM_TRAIN and all(len(r["annotations"]) for r in inst)
    assert {a["category_id"] for r in inst for a in r["annotations"]} <= set(range(len(THING_IDS)))

    sem = DatasetCatalog.get("synthetic_val_sem_seg")
    assert [r["file_name"] for r in sem] == [r["file_name"] for r in pan]

    meta = MetadataCatalog.get("synthetic_val_panoptic")
    assert meta.evaluator_type == "coco_panoptic_seg" and meta.ignore_label == 255
    assert meta.json_file.endswith("instances.json") and os.path.isdir(meta.sem_seg_root)
    assert MetadataCatalog.get("synthetic_val_instance").evaluator_type == "coco"
    assert MetadataCatalog.get("synthetic_val_sem_seg").evaluator_type == "sem_seg"


def test_missing_data_fails_only_when_loaded(root, tmp_path):
    register_all_synthetic(str(tmp_path / "nowhere"))
    try:
        with pytest.raises(FileNotFoundError, match="mask2former.data.synthetic"):
            DatasetCatalog.get("synthetic_val_panoptic")
    finally:
        register_all_synthetic(root)


def _perfect_outputs(record: dict) -> dict:
    """Model outputs equal to the ground truth of one panoptic record."""
    pan = rgb2id(cv2.imread(record["pan_seg_file_name"])[..., ::-1])
    sem = cv2.imread(record["sem_seg_file_name"], cv2.IMREAD_UNCHANGED)
    num_classes = len(SYNTHETIC_CATEGORIES)
    sem_scores = np.stack([sem == c for c in range(num_classes)]).astype(np.float32)  # (K, H, W)
    things = [s for s in record["segments_info"] if s["isthing"]]
    masks = torch.from_numpy(np.stack([pan == s["id"] for s in things]))  # (N, H, W)
    instances = Instances(pan.shape)
    instances.pred_masks = masks
    instances.pred_boxes = BitMasks(masks).get_bounding_boxes()
    instances.scores = torch.ones(len(things))
    instances.pred_classes = torch.tensor([s["category_id"] for s in things])
    segments_info = [
        {"id": s["id"], "category_id": s["category_id"], "isthing": s["isthing"]}
        for s in record["segments_info"]
    ]
    return {
        "sem_seg": torch.from_numpy(sem_scores),
        "instances": instances,
        "panoptic_seg": (torch.from_numpy(pan.astype(np.int32)), segments_info),
    }


def test_evaluators_score_the_ground_truth_perfectly(root, tmp_path):
    name = "synthetic_val_panoptic"
    evaluators = [
        COCOPanopticEvaluator(name, str(tmp_path / "pan")),
        COCOEvaluator(name, output_dir=str(tmp_path / "ins"), use_fast_impl=False),
        SemSegEvaluator(
            name,
            distributed=False,
            output_dir=str(tmp_path / "sem"),
            # Detectron2's default loader calls np.array(copy=False), which numpy 2 rejects.
            sem_seg_loading_fn=lambda path, dtype: np.asarray(Image.open(path), dtype=dtype),
        ),
    ]
    for evaluator in evaluators:
        evaluator.reset()
    for record in DatasetCatalog.get(name):
        outputs = _perfect_outputs(record)
        for evaluator in evaluators:
            evaluator.process([record], [outputs])
    pq, ap, miou = (evaluator.evaluate() for evaluator in evaluators)
    assert pq["panoptic_seg"]["PQ"] == pytest.approx(100.0)
    assert ap["segm"]["AP"] == pytest.approx(100.0)
    assert miou["sem_seg"]["mIoU"] == pytest.approx(100.0)


def test_a_new_shape_hides_at_most_max_hidden_of_each_earlier_one():
    # Two stuff regions (0, 1) and two shapes (2, 3) already drawn, on a 64 x 64 image.
    segments = np.zeros((64, 64), np.int64)
    segments[32:] = 1
    segments[8:40, 8:40] = 2
    segments[30:60, 30:60] = 3
    visible = np.bincount(segments.ravel(), minlength=4)  # (4,) pixels per segment
    rng = np.random.default_rng(0)
    overlaps = []
    for _ in range(200):
        placed = _place_thing(rng, "square", segments, first_thing=2, num_things=2)
        if placed is None:
            continue
        inside = placed[0]  # (H, W) bool
        assert inside.shape == segments.shape and inside.any()
        hidden = np.bincount(segments[inside], minlength=4)  # (4,)
        assert (hidden[2:] <= MAX_HIDDEN * visible[2:]).all()
        overlaps.append(hidden[2:].max() > 0)
    assert len(overlaps) > 100 and any(overlaps)  # shapes still overlap, just not too much


def test_each_shape_class_keeps_to_its_hue_band():
    """Measured on the written uint8 image: the median hue of each shape lies in its class band."""
    name_of = {c["id"]: c["name"] for c in SYNTHETIC_CATEGORIES}
    seen = set()
    for seed in range(6):
        image, segments, categories = draw_sample(np.random.default_rng(seed))
        hue = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)[..., 0].astype(np.float64)  # (H, W) 0..180
        for idx, cat_id in enumerate(categories):
            visible = segments == idx
            if cat_id not in THING_IDS or visible.sum() < 200:
                continue
            lo, hi = THING_HUES[name_of[cat_id]]
            # Hues relative to the band's start, unwrapped around red: (N,) in [0, 180).
            offsets = (hue[visible] - lo) % 180
            width = (hi - lo) % 180
            assert np.median(offsets) <= width + 2, (name_of[cat_id], np.median(offsets), width)
            seen.add(name_of[cat_id])
    assert seen == set(THING_HUES)
