"""Evaluation: evaluator selection by ``evaluator_type`` and the evaluators Detectron2 lacks."""

from .build import PANOPTIC_EVALUATOR_TYPES, build_evaluator, register_coco_evaluator
from .instance_evaluation import InstanceSegEvaluator

__all__ = [
    "PANOPTIC_EVALUATOR_TYPES",
    "InstanceSegEvaluator",
    "build_evaluator",
    "register_coco_evaluator",
]
