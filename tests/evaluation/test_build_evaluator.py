"""Evaluator selection by ``evaluator_type`` on the generated panoptic/instance/semantic data."""

import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import (
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
)

from mask2former.config import add_maskformer2_config
from mask2former.data.datasets.register_synthetic import register_all_synthetic
from mask2former.data.synthetic import generate_synthetic_dataset
from mask2former.engine.trainer import Trainer
from mask2former.evaluation import build_evaluator

UNKNOWN = "test_build_evaluator_unknown_type"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    generate_synthetic_dataset(root, num_train=1, num_val=2, min_size=32, max_size=48,
                               progress=False)
    register_all_synthetic(root)
    yield root
    register_all_synthetic()  # point the names back at the default root


def _cfg(tmp_path, panoptic=True, instance=True, semantic=True):
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = panoptic
    cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON = instance
    cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON = semantic
    return cfg


def _types(evaluator):
    if isinstance(evaluator, DatasetEvaluators):
        return [type(e) for e in evaluator._evaluators]
    return type(evaluator)


def test_panoptic_dataset_gets_one_evaluator_per_enabled_task(synthetic, tmp_path):
    evaluator = build_evaluator(_cfg(tmp_path), "synthetic_val_panoptic")
    assert _types(evaluator) == [COCOPanopticEvaluator, COCOEvaluator, SemSegEvaluator]
    panoptic, instance, semantic = evaluator._evaluators
    assert panoptic._output_dir == str(tmp_path / "inference")  # OUTPUT_DIR/inference
    assert instance._use_fast_impl is False  # detectron2._C may be absent
    assert semantic._dataset_name == "synthetic_val_panoptic"

    only_pq = build_evaluator(_cfg(tmp_path, instance=False, semantic=False),
                              "synthetic_val_panoptic", str(tmp_path / "pq"))
    assert _types(only_pq) is COCOPanopticEvaluator  # a single evaluator is not wrapped
    assert only_pq._output_dir == str(tmp_path / "pq")
    ap_miou = build_evaluator(_cfg(tmp_path, panoptic=False), "synthetic_val_panoptic")
    assert _types(ap_miou) == [COCOEvaluator, SemSegEvaluator]


@pytest.mark.parametrize(
    "dataset,expected",
    [("synthetic_val_instance", COCOEvaluator), ("synthetic_val_sem_seg", SemSegEvaluator)],
)
def test_instance_and_semantic_datasets_get_their_evaluator(synthetic, tmp_path, dataset,
                                                            expected):
    # The TEST.*_ON switches only concern panoptic datasets.
    evaluator = build_evaluator(_cfg(tmp_path, panoptic=False, instance=False, semantic=False),
                                dataset)
    assert _types(evaluator) is expected


def test_trainer_builds_the_same_evaluators(synthetic, tmp_path):
    evaluator = Trainer.build_evaluator(_cfg(tmp_path), "synthetic_val_panoptic")
    assert _types(evaluator) == [COCOPanopticEvaluator, COCOEvaluator, SemSegEvaluator]


@pytest.fixture
def unknown_dataset():
    DatasetCatalog.register(UNKNOWN, lambda: [])
    MetadataCatalog.get(UNKNOWN).set(evaluator_type="lvis_made_up")
    yield UNKNOWN
    DatasetCatalog.remove(UNKNOWN)
    MetadataCatalog.remove(UNKNOWN)


def test_unknown_evaluator_type_names_dataset_and_type(unknown_dataset, tmp_path):
    with pytest.raises(NotImplementedError, match=f"{UNKNOWN} of evaluator_type 'lvis_made_up'"):
        build_evaluator(_cfg(tmp_path), unknown_dataset)


def test_panoptic_dataset_without_enabled_task_is_an_error(synthetic, tmp_path):
    cfg = _cfg(tmp_path, panoptic=False, instance=False, semantic=False)
    with pytest.raises(NotImplementedError, match="synthetic_val_panoptic.*coco_panoptic_seg"):
        build_evaluator(cfg, "synthetic_val_panoptic")
