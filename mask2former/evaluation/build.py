"""Evaluator selection by a dataset's ``evaluator_type`` (as the official ``train_net.py``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.evaluation import (
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
)

from ..config import inference_switches
from .instance_evaluation import InstanceSegEvaluator
from .sem_seg_loading import load_sem_seg_labels

__all__ = ["PANOPTIC_EVALUATOR_TYPES", "build_evaluator", "register_coco_evaluator"]

logger = logging.getLogger(__name__)

# Panoptic datasets: each task the model outputs is evaluated (PQ, AP, mIoU).
PANOPTIC_EVALUATOR_TYPES = (
    "coco_panoptic_seg",
    "ade20k_panoptic_seg",
    "cityscapes_panoptic_seg",
    "mapillary_vistas_panoptic_seg",
)


# Meta-architecture -> its builder of the evaluator of COCO-format datasets, for families whose
# evaluation adds to COCO AP (Mask Transfiner: Boundary AP); called as (cfg, dataset, folder).
_COCO_EVALUATORS: dict[str, Callable] = {}


def register_coco_evaluator(meta_architecture: str, builder: Callable) -> None:
    """Use ``builder(cfg, dataset_name, output_folder)`` for COCO-format datasets of models
    whose ``MODEL.META_ARCHITECTURE`` is ``meta_architecture``."""
    _COCO_EVALUATORS[meta_architecture] = builder


def build_evaluator(
    cfg: CfgNode, dataset_name: str, output_folder: str | None = None
) -> DatasetEvaluator:
    """Evaluator(s) of ``dataset_name`` chosen by its metadata's ``evaluator_type``.

    ``sem_seg``, ``coco``, ``cityscapes_instance`` and ``cityscapes_sem_seg`` get one evaluator;
    the panoptic types (:data:`PANOPTIC_EVALUATOR_TYPES`) get one per task the model outputs
    (``MODEL.MASK_FORMER.TEST.{PANOPTIC,INSTANCE,SEMANTIC}_ON``), in that order. Instance (AP)
    and semantic (mIoU) evaluation of a panoptic dataset need its ``json_file`` and
    ``sem_seg_root``; without one that task is skipped with a warning. COCO's evaluator is used
    for AP when the thing classes come first, :class:`InstanceSegEvaluator` otherwise.

    Args:
        cfg: the config (``OUTPUT_DIR`` and ``MODEL.MASK_FORMER.TEST`` are read).
        dataset_name: a registered dataset with an ``evaluator_type`` in its metadata.
        output_folder: where evaluators write their files; ``OUTPUT_DIR/inference`` if None.

    Returns:
        The single evaluator, or a :class:`DatasetEvaluators` when there are several.

    Raises:
        NotImplementedError: naming the dataset and its type, when no evaluator applies.
    """
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
    metadata = MetadataCatalog.get(dataset_name)
    evaluator_type = metadata.get("evaluator_type")
    test = inference_switches(cfg)

    def coco() -> COCOEvaluator:
        family_builder = _COCO_EVALUATORS.get(cfg.MODEL.META_ARCHITECTURE)
        if family_builder is not None:
            return family_builder(cfg, dataset_name, output_folder)
        # use_fast_impl needs detectron2._C, which the registry's Detectron2 wheel lacks.
        return COCOEvaluator(dataset_name, output_dir=output_folder, use_fast_impl=False)

    def sem_seg() -> SemSegEvaluator:
        return SemSegEvaluator(
            dataset_name, distributed=True, output_dir=output_folder,
            sem_seg_loading_fn=load_sem_seg_labels,
        )

    evaluators: list[DatasetEvaluator] = []
    if evaluator_type == "sem_seg":
        evaluators.append(sem_seg())
    elif evaluator_type == "coco":
        evaluators.append(coco())
    elif evaluator_type == "cityscapes_instance":
        evaluators.append(CityscapesInstanceEvaluator(dataset_name))
    elif evaluator_type == "cityscapes_sem_seg":
        evaluators.append(CityscapesSemSegEvaluator(dataset_name))
    elif evaluator_type in PANOPTIC_EVALUATOR_TYPES:
        cityscapes = evaluator_type == "cityscapes_panoptic_seg"
        if test.PANOPTIC_ON:
            evaluators.append(COCOPanopticEvaluator(dataset_name, output_folder))
        if test.INSTANCE_ON:
            if cityscapes:
                evaluators.append(CityscapesInstanceEvaluator(dataset_name))
            elif not metadata.get("json_file"):
                _skip(dataset_name, "instance (AP)", "json_file", "a COCO instance json")
            elif evaluator_type == "coco_panoptic_seg" and _things_first(metadata):
                # COCO's thing classes come first, so their contiguous ids are 0..#things-1.
                evaluators.append(coco())
            else:
                evaluators.append(InstanceSegEvaluator(dataset_name, output_dir=output_folder))
        if test.SEMANTIC_ON:
            if cityscapes:
                evaluators.append(CityscapesSemSegEvaluator(dataset_name))
            elif not metadata.get("sem_seg_root"):
                _skip(dataset_name, "semantic (mIoU)", "sem_seg_root", "semantic label PNGs")
            else:
                evaluators.append(sem_seg())
    if not evaluators:
        raise NotImplementedError(
            f"No evaluator for dataset {dataset_name} of evaluator_type {evaluator_type!r} "
            "with the enabled inference tasks (MODEL.MASK_FORMER.TEST, or the family's own)."
        )
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)


def _things_first(metadata) -> bool:
    """Whether the thing classes' contiguous ids are 0..#things-1 (as COCOEvaluator needs)."""
    ids = sorted(metadata.get("thing_dataset_id_to_contiguous_id", {}).values())
    return ids == list(range(len(ids)))


def _skip(dataset_name: str, task: str, key: str, what: str) -> None:
    logger.warning(
        "No %s evaluation of panoptic dataset '%s': its metadata has no %s (%s); declare it "
        "(DATASETS.CUSTOM.%s.%s) to evaluate this task",
        task, dataset_name, key, what, dataset_name, key.upper(),
    )
