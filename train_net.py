#!/usr/bin/env python
"""Train or evaluate Mask2Former models (Detectron2's command line).

Examples::

    python train_net.py --config-file configs/synthetic/<config>.yaml --num-gpus 1
    python train_net.py --config-file <config>.yaml --num-gpus 2 MODEL.DEVICE cpu
    python train_net.py --config-file <config>.yaml --resume            # continue a run
    python train_net.py --config-file <config>.yaml --eval-only MODEL.WEIGHTS <file.pth|.pkl>

Datasets declared in the config (``DATASETS.CUSTOM``) are registered and their files checked
before anything is built. ``--num-gpus N`` starts N processes (on the CPU with the gloo backend
when MODEL.DEVICE is cpu or CUDA is absent). ``--eval-only`` also runs test-time augmentation
when TEST.AUG.ENABLED.
"""

import logging
import os

from detectron2.engine import default_argument_parser, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm

import mask2former  # noqa: F401  (registers models, datasets and mappers)
from mask2former.data.checks import check_dataset_config
from mask2former.data.declared import register_declared_datasets
from mask2former.engine.defaults import load_config, setup
from mask2former.engine.trainer import Trainer
from mask2former.utils.allocator import keep_freed_memory
from mask2former.utils.checkpoint import SafeCheckpointer

logger = logging.getLogger("mask2former.train_net")


def main(args):
    keep_freed_memory()  # in every worker; M2F_KEEP_FREED_MEMORY=0 keeps malloc's defaults
    cfg = setup(args)
    register_declared_datasets(cfg)  # DATASETS.CUSTOM, in every worker process
    check_dataset_config(cfg)  # fail early, with a clear message, on unfit datasets and files

    if args.eval_only:
        model = Trainer.build_model(cfg)
        SafeCheckpointer(
            model, save_dir=cfg.OUTPUT_DIR,
            allow_shape_mismatch=cfg.MODEL.WEIGHTS_ALLOW_SHAPE_MISMATCH,
        ).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = Trainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            res.update(Trainer.test_with_TTA(cfg, model))
        if comm.is_main_process():
            verify_results(cfg, res)
        return res

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def _hide_gpus_if_cpu(args) -> None:
    """MODEL.DEVICE cpu with several processes: hide the GPUs from the workers, so that
    Detectron2's launcher picks the gloo backend (it uses NCCL whenever CUDA is visible)."""
    if args.num_gpus * args.num_machines <= 1:
        return
    cfg = load_config(args.config_file, args.opts)
    if cfg.MODEL.DEVICE == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    _hide_gpus_if_cpu(args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
