"""Detectron2 trainer of Mask2Former: data, evaluators, optimizer, schedule, checkpoints, TTA.

:class:`Trainer` is Detectron2's :class:`DefaultTrainer`, built by Detectron2's own constructor
and customised through its overridable builders, as the official ``train_net.py`` (mapper by
``INPUT.DATASET_MAPPER_NAME``, evaluators by the dataset's ``evaluator_type`` through
:func:`mask2former.evaluation.build_evaluator`, AdamW with parameter groups, poly schedule), and
in three more points:

- checkpoints are read with :class:`~mask2former.utils.checkpoint.SafeCheckpointer` (no code
  runs from a weight file; tensors that do not fit raise an error); it replaces Detectron2's
  checkpointer after the constructor, in the periodic-checkpoint hook too;
- it runs on the CPU in one or several processes (DDP without ``device_ids`` there, see
  :func:`_init_with_cpu_ddp`);
- AMP is used only on CUDA (:func:`mask2former.engine.defaults.setup` turns it off elsewhere;
  the trainer does too, with a warning, for configs that did not go through ``setup``).
"""

from __future__ import annotations

import logging
import os
import types
import weakref
from collections import OrderedDict

from detectron2.config import CfgNode
from detectron2.data import build_detection_train_loader
from detectron2.engine import DefaultTrainer, create_ddp_model, hooks
from detectron2.projects.deeplab import build_lr_scheduler
from detectron2.utils import comm
from torch import nn

from ..data.dataset_mappers.build import build_train_mapper
from ..evaluation import build_evaluator
from ..test_time_augmentation import MaskFormerWithTTA
from ..utils.checkpoint import SafeCheckpointer
from .optimizer import build_optimizer

__all__ = ["Trainer"]

logger = logging.getLogger(__name__)


def _create_cpu_ddp_model(model: nn.Module, **kwargs) -> nn.Module:
    """Detectron2's ``create_ddp_model`` for a module on the CPU: DDP refuses ``device_ids``
    there, and Detectron2 passes ``[local rank]`` unless told otherwise."""
    kwargs.setdefault("device_ids", None)
    return create_ddp_model(model, **kwargs)


def _init_with_cpu_ddp(trainer: DefaultTrainer, cfg: CfgNode) -> None:
    """Run Detectron2's ``DefaultTrainer.__init__`` on ``trainer`` with CPU-ready DDP.

    ``DefaultTrainer.__init__`` wraps the model with the module-level ``create_ddp_model`` of
    ``detectron2.engine.defaults`` and offers no builder or argument for it. Instead of copying
    the constructor, or assigning that module attribute (state shared by the whole process), its
    code runs here as a new function whose globals are a copy of its module's globals with that
    one name bound to :func:`_create_cpu_ddp_model`; Detectron2's module is left untouched.
    """
    init = DefaultTrainer.__init__
    if "create_ddp_model" not in init.__code__.co_names:
        raise RuntimeError(
            "DefaultTrainer.__init__ of this Detectron2 version does not call create_ddp_model, "
            "so Trainer cannot make its DDP work on the CPU; train on CUDA or in one process."
        )
    init_globals = dict(init.__globals__, create_ddp_model=_create_cpu_ddp_model)
    # The closure carries the __class__ cell of the constructor's zero-argument super().
    cpu_init = types.FunctionType(
        init.__code__, init_globals, init.__name__, init.__defaults__, init.__closure__
    )
    cpu_init(trainer, cfg)


class Trainer(DefaultTrainer):
    """:class:`DefaultTrainer` for Mask2Former (see the module docstring)."""

    def __init__(self, cfg: CfgNode):
        """
        Args:
            cfg: the config (a clone without AMP is used when AMP is enabled off CUDA).
        """
        cfg = self._without_amp_off_cuda(cfg)
        if comm.get_world_size() > 1 and not cfg.MODEL.DEVICE.startswith("cuda"):
            _init_with_cpu_ddp(self, cfg)
        else:
            super().__init__(cfg)
        self._use_safe_checkpointer()

    @staticmethod
    def _without_amp_off_cuda(cfg: CfgNode) -> CfgNode:
        """``cfg``, or a clone with ``SOLVER.AMP.ENABLED`` off (and a warning) when AMP is asked
        for on a device other than CUDA (``setup`` has usually done so already)."""
        if not cfg.SOLVER.AMP.ENABLED or cfg.MODEL.DEVICE.startswith("cuda"):
            return cfg
        logger.warning(
            "AMP is off: SOLVER.AMP.ENABLED is only used on CUDA (MODEL.DEVICE %s).",
            cfg.MODEL.DEVICE,
        )
        adjusted = cfg.clone()
        adjusted.defrost()
        adjusted.SOLVER.AMP.ENABLED = False
        if cfg.is_frozen():
            adjusted.freeze()
        return adjusted

    def _use_safe_checkpointer(self) -> None:
        """Replace Detectron2's checkpointer by a :class:`SafeCheckpointer` of the same model,
        folder and checkpointables, in the hooks built by the constructor too."""
        previous = self.checkpointer
        self.checkpointer = SafeCheckpointer(
            self._trainer.model,
            self.cfg.OUTPUT_DIR,
            allow_shape_mismatch=self.cfg.MODEL.WEIGHTS_ALLOW_SHAPE_MISMATCH,
            trainer=weakref.proxy(self),
        )
        for hook in self._hooks:
            if isinstance(hook, hooks.PeriodicCheckpointer) and hook.checkpointer is previous:
                hook.checkpointer = self.checkpointer

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
