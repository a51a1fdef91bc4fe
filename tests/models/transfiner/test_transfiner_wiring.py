"""Mask Transfiner's hooks into the shared parts: the "rcnn" training mapper, its class-count
check on MODEL.ROI_HEADS.NUM_CLASSES, and its evaluator for COCO-format datasets."""

from pathlib import Path

import pytest
from detectron2.data import DatasetMapper
from detectron2.evaluation import COCOEvaluator

from mask2former.config import load_config
from mask2former.data.checks import check_dataset_config
from mask2former.data.dataset_mappers.build import MAPPERS, build_train_mapper
from mask2former.evaluation import build_evaluator
from mask2former.models.transfiner.evaluation import BoundaryCOCOEvaluator

CONFIG = str(
    Path(__file__).resolve().parents[3]
    / "configs/synthetic/instance-segmentation/transfiner_R18_synthetic.yaml"
)


def test_rcnn_mapper_and_class_count_check(synthetic_data):
    cfg = load_config(CONFIG)
    assert MAPPERS["rcnn"] is DatasetMapper
    assert isinstance(build_train_mapper(cfg), DatasetMapper)
    check_dataset_config(cfg)  # 4 thing classes = MODEL.ROI_HEADS.NUM_CLASSES
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 5
    with pytest.raises(ValueError, match="MODEL.ROI_HEADS.NUM_CLASSES=5"):
        check_dataset_config(cfg)


def test_boundary_ap_evaluator_is_chosen_by_its_key(tmp_path, synthetic_data):
    cfg = load_config(CONFIG)
    plain = build_evaluator(cfg, "synthetic_val_instance", str(tmp_path))
    assert type(plain) is COCOEvaluator
    cfg.MODEL.TRANSFINER.BOUNDARY_AP = True
    assert isinstance(build_evaluator(cfg, "synthetic_val_instance", str(tmp_path)),
                      BoundaryCOCOEvaluator)
