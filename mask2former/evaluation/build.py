"""Evaluator selection by a dataset's ``evaluator_type`` (as the official ``train_net.py``)."""

from __future__ import annotations

import os

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

from .instance_evaluation import InstanceSegEvaluator
from .sem_seg_loading import load_sem_seg_labels

__all__ = ["PANOPTIC_EVALUATOR_TYPES", "build_evaluator"]

# Panoptic datasets: each task the model outputs is evaluated (PQ, AP, mIoU).
PANOPTIC_EVALUATOR_TYPES = (
    "coco_panoptic_seg",
    "ade20k_panoptic_seg",
    "cityscapes_panoptic_seg",
    "mapillary_vistas_panoptic_seg",
)


def build_evaluator(
    cfg: CfgNode, dataset_name: str, output_folder: str | None = None
) -> DatasetEvaluator:
    """Evaluator(s) of ``dataset_name`` chosen by its metadata's ``evaluator_type``.

    ``sem_seg``, ``coco``, ``cityscapes_instance`` and ``cityscapes_sem_seg`` get one evaluator;
    the panoptic types (:data:`PANOPTIC_EVALUATOR_TYPES`) get one per task the model outputs
    (``MODEL.MASK_FORMER.TEST.{PANOPTIC,INSTANCE,SEMANTIC}_ON``), in that order.

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
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type")
    test = cfg.MODEL.MASK_FORMER.TEST

    def coco() -> COCOEvaluator:
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
            elif evaluator_type == "coco_panoptic_seg":
                # COCO's thing classes come first, so their contiguous ids are 0..#things-1.
                evaluators.append(coco())
            else:
                evaluators.append(InstanceSegEvaluator(dataset_name, output_dir=output_folder))
        if test.SEMANTIC_ON:
            evaluators.append(CityscapesSemSegEvaluator(dataset_name) if cityscapes else sem_seg())
    if not evaluators:
        raise NotImplementedError(
            f"No evaluator for dataset {dataset_name} of evaluator_type {evaluator_type!r} "
            "with the enabled MODEL.MASK_FORMER.TEST tasks."
        )
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)
