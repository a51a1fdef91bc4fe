"""Detectron2 trainer of Mask2Former: data, evaluators, optimizer, schedule, checkpoints, TTA.

:class:`Trainer` is Detectron2's :class:`DefaultTrainer`, built by Detectron2's own constructor
and customised through its overridable builders, as the official ``train_net.py`` (mapper by
``INPUT.DATASET_MAPPER_NAME``, evaluators by the dataset's ``evaluator_type`` through
:func:`mask2former.evaluation.build_evaluator`, AdamW with parameter groups, poly schedule), and
in these points:

- checkpoints are read with :class:`~mask2former.utils.checkpoint.SafeCheckpointer` (no code
  runs from a weight file; tensors that do not fit raise an error); it replaces Detectron2's
  checkpointer after the constructor, in the periodic-checkpoint hook too;
- it runs on the CPU in one or several processes (DDP without ``device_ids`` there, see
  :func:`_init_with_cpu_ddp`);
- AMP is used only on CUDA (:func:`mask2former.engine.defaults.setup` turns it off elsewhere;
  the trainer does too, with a warning, for configs that did not go through ``setup``);
- a non-finite loss term stops training before the optimizer step, in every process, with a
  :class:`FloatingPointError` naming the iteration, the terms and the last checkpoint (which
  is kept: nothing is saved after the failed step). Detectron2 only checks the total, in the
  main process, after gathering;
- a run stopped by an error runs no final evaluation (:meth:`Trainer.after_train`).
"""

from __future__ import annotations

import logging
import os
import types
import weakref
from collections import OrderedDict
from collections.abc import Mapping

import torch
import torch.distributed as dist
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
        self._check_losses_before_the_step()

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

    def _check_losses_before_the_step(self) -> None:
        """Make the inner trainer run :meth:`_raise_if_not_finite` where it writes the metrics of
        a step: after the backward pass, before the optimizer step (``SimpleTrainer.run_step``),
        with the loss dict of this process."""
        write_metrics = self._trainer._write_metrics

        def check_then_write(loss_dict, data_time, prefix="", iter=None):  # noqa: A002
            self._raise_if_not_finite(loss_dict, self._trainer.iter if iter is None else iter)
            write_metrics(loss_dict, data_time, prefix=prefix, iter=iter)

        self._trainer._write_metrics = check_then_write

    def _raise_if_not_finite(self, loss_dict: Mapping[str, torch.Tensor], iteration: int) -> None:
        """Raise :class:`FloatingPointError` in every process when a loss term of any process
        is NaN or infinite (one flag is all-reduced, so that no process steps on alone)."""
        names = list(loss_dict)
        values = torch.stack([loss_dict[k].detach().float().reshape(()) for k in names])  # (T,)
        finite = torch.isfinite(values)  # (T,)
        flag = (~finite).any().to(torch.int32).reshape(1)  # (1,)
        if comm.get_world_size() > 1 and dist.is_initialized():
            dist.all_reduce(flag)
        if not flag.item():
            return
        bad = [f"{k}={v:g}" for k, v, ok in zip(names, values.tolist(), finite.tolist()) if not ok]
        where = (
            f"in this process (rank {comm.get_rank()}): {', '.join(bad)}"
            if bad
            else f"in another process (rank {comm.get_rank()} has finite losses)"
        )
        if self.checkpointer.has_checkpoint():
            kept = f"the last checkpoint, {self.checkpointer.get_checkpoint_file()}, is kept"
        else:
            kept = "no checkpoint had been written yet"
        raise FloatingPointError(
            f"Non-finite loss at iteration {iteration} {where}. Training stopped before the "
            f"optimizer step; {kept}. Lower SOLVER.BASE_LR, enable SOLVER.CLIP_GRADIENTS or "
            "check the data of this iteration."
        )

    def after_train(self) -> None:
        """Detectron2's ``after_train``, without the final evaluation (and best-checkpoint
        saving) when an error stopped the loop before ``max_iter``. Detectron2 runs them when
        the failed iteration was the last one: on weights whose BatchNorm statistics a
        non-finite forward pass may have spoilt, and an error there would hide the first."""
        if self.iter < self.max_iter:
            skipped = (hooks.EvalHook, hooks.BestCheckpointer)
            self._hooks = [h for h in self._hooks if not isinstance(h, skipped)]
            logger.info(
                "Training stopped at iteration %d of %d: no final evaluation.",
                self.iter,
                self.max_iter,
            )
        super().after_train()

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
