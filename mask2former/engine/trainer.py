"""Detectron2 trainer of Mask2Former: data, evaluators, optimizer, schedule, checkpoints, TTA.

Differs from :class:`DefaultTrainer` where the official ``train_net.py`` does (mapper by
``INPUT.DATASET_MAPPER_NAME``, evaluators by the dataset's ``evaluator_type``, AdamW with
parameter groups, poly schedule) and in three more points:

- it runs on the CPU, in one or several processes (DDP without ``device_ids`` there);
- AMP is used only on CUDA (:func:`mask2former.engine.defaults.setup` turns it off elsewhere);
- checkpoints are read with :class:`~mask2former.utils.checkpoint.SafeCheckpointer` (no code
  runs from a weight file; tensors that do not fit raise an error).
"""

from __future__ import annotations

import logging
import os
import weakref
from collections import OrderedDict

from detectron2.data import MetadataCatalog, build_detection_train_loader
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, create_ddp_model
from detectron2.engine.train_loop import TrainerBase
from detectron2.evaluation import (
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
)
from detectron2.projects.deeplab import build_lr_scheduler
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..data.dataset_mappers.build import build_train_mapper
from ..evaluation.instance_evaluation import InstanceSegEvaluator
from ..evaluation.sem_seg_loading import load_sem_seg_labels
from ..test_time_augmentation import MaskFormerWithTTA
from ..utils.checkpoint import SafeCheckpointer
from .optimizer import build_optimizer

__all__ = ["Trainer", "build_evaluator"]

logger = logging.getLogger(__name__)

_PANOPTIC_TYPES = (
    "coco_panoptic_seg",
    "ade20k_panoptic_seg",
    "cityscapes_panoptic_seg",
    "mapillary_vistas_panoptic_seg",
)


def build_evaluator(cfg, dataset_name: str, output_folder: str | None = None):
    """Evaluator(s) of ``dataset_name`` by its metadata's ``evaluator_type``, as the official
    ``train_net.py``; on panoptic datasets each task is evaluated when the model outputs it
    (``MODEL.MASK_FORMER.TEST.{PANOPTIC,INSTANCE,SEMANTIC}_ON``)."""
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
    evaluator_type = MetadataCatalog.get(dataset_name).evaluator_type
    test = cfg.MODEL.MASK_FORMER.TEST

    def coco():
        # use_fast_impl needs detectron2._C, which the registry's Detectron2 wheel lacks.
        return COCOEvaluator(dataset_name, output_dir=output_folder, use_fast_impl=False)

    def sem_seg():
        return SemSegEvaluator(
            dataset_name, distributed=True, output_dir=output_folder,
            sem_seg_loading_fn=load_sem_seg_labels,
        )

    evaluators = []
    if evaluator_type == "sem_seg":
        evaluators.append(sem_seg())
    elif evaluator_type == "coco":
        evaluators.append(coco())
    elif evaluator_type == "cityscapes_instance":
        evaluators.append(CityscapesInstanceEvaluator(dataset_name))
    elif evaluator_type == "cityscapes_sem_seg":
        evaluators.append(CityscapesSemSegEvaluator(dataset_name))
    elif evaluator_type in _PANOPTIC_TYPES:
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


class Trainer(DefaultTrainer):
    """:class:`DefaultTrainer` for Mask2Former (see the module docstring)."""

    def __init__(self, cfg):
        # DefaultTrainer.__init__, with DDP that also works on the CPU and a safe checkpointer.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)

        on_cuda = cfg.MODEL.DEVICE.startswith("cuda")
        ddp_kwargs = {} if on_cuda else {"device_ids": None}
        model = create_ddp_model(model, broadcast_buffers=False, **ddp_kwargs)
        use_amp = cfg.SOLVER.AMP.ENABLED and on_cuda
        if cfg.SOLVER.AMP.ENABLED and not use_amp:
            logger.warning("AMP is off: SOLVER.AMP.ENABLED is only used on CUDA.")
        self._trainer = (AMPTrainer if use_amp else SimpleTrainer)(model, data_loader, optimizer)

        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = SafeCheckpointer(
            model,
            cfg.OUTPUT_DIR,
            allow_shape_mismatch=cfg.MODEL.WEIGHTS_ALLOW_SHAPE_MISMATCH,
            trainer=weakref.proxy(self),
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg

        self.register_hooks(self.build_hooks())

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=build_train_mapper(cfg))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        # WarmupPolyLR, or Detectron2's schedules (WarmupMultiStepLR, ...).
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def test_with_TTA(cls, cfg, model):
        """Evaluate ``model`` with test-time augmentation (``TEST.AUG``); keys get "_TTA"."""
        logger.info("Running inference with test-time augmentation ...")
        model = MaskFormerWithTTA(cfg, model)
        evaluators = [
            cls.build_evaluator(
                cfg, name, output_folder=os.path.join(cfg.OUTPUT_DIR, "inference_TTA")
            )
            for name in cfg.DATASETS.TEST
        ]
        res = cls.test(cfg, model, evaluators)
        return OrderedDict((k + "_TTA", v) for k, v in res.items())
