"""The main job on the built-in generated data (the README's first command).

1. writes the generated dataset (mask2former.data.synthetic) unless it is already complete;
2. evaluates the untrained model (random weights) on the validation split;
3. trains the small panoptic Mask2Former on the CPU (resumable: a second run continues);
4. evaluates the trained model with Detectron2's evaluators (PQ, AP, mIoU);
5. draws predictions on validation images next to the ground truth;
6. writes every figure to ``OUTPUT_DIR/default_run.json`` and logs a summary.

Usage: ``python tools/default_run.py [--config-file FILE] [--fresh] [KEY VALUE ...]``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import time

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.events import EventStorage

import mask2former  # noqa: F401  (registers the components and datasets)
from mask2former.data.synthetic import generate_synthetic_dataset
from mask2former.engine.defaults import setup
from mask2former.engine.trainer import Trainer
from mask2former.predictor import Predictor
from mask2former.utils.allocator import keep_freed_memory
from mask2former.utils.visualization import save_prediction_grid

logger = logging.getLogger("mask2former.default_run")

DEFAULT_CONFIG = "configs/synthetic/panoptic-segmentation/maskformer2_R18_synthetic.yaml"
# (task key of Detectron2's results, metric) reported for the default run.
HEADLINE = (("panoptic_seg", "PQ"), ("segm", "AP"), ("sem_seg", "mIoU"))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, metavar="FILE")
    parser.add_argument("--fresh", action="store_true", help="ignore earlier checkpoints")
    parser.add_argument("--num-vis", type=int, default=6, help="validation images to draw")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    # Fields that Detectron2's default_setup reads from its own command line.
    args.num_gpus, args.num_machines, args.machine_rank = 1, 1, 0
    args.resume, args.eval_only, args.dist_url = not args.fresh, False, "auto"
    return args


def headline(results: dict) -> dict:
    """PQ / AP / mIoU out of Detectron2's nested results (missing tasks are left out)."""
    return {
        metric: round(float(results[task][metric]), 2)
        for task, metric in HEADLINE
        if task in results and metric in results[task]
    }


def peak_memory_mib() -> float:
    """Peak resident memory of this process (the data-loader workers are not included)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv=None) -> int:
    args = parse_args(argv)
    kept = keep_freed_memory()  # M2F_KEEP_FREED_MEMORY=0 keeps malloc's defaults
    started = time.perf_counter()
    data_root = generate_synthetic_dataset(progress=True)
    cfg = setup(args)
    logger.info("generated data in %s; output in %s", data_root, cfg.OUTPUT_DIR)
    report_path = os.path.join(cfg.OUTPUT_DIR, "default_run.json")
    report = {"config": args.config_file, "opts": args.opts}
    if os.path.isfile(report_path) and not args.fresh:
        with open(report_path) as f:
            report["untrained"] = json.load(f).get("untrained")

    if not report.get("untrained"):
        logger.info("evaluating the untrained model (random weights)")
        untrained = Trainer.build_model(cfg)
        with EventStorage():
            report["untrained"] = headline(Trainer.test(cfg, untrained))
        del untrained

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=not args.fresh)
    start_iter = trainer.start_iter
    train_start = time.perf_counter()
    trainer.train()
    iters = cfg.SOLVER.MAX_ITER - start_iter
    train_seconds = time.perf_counter() - train_start
    trained = headline(trainer.test(cfg, trainer.model))
    report.update(
        trained=trained,
        iterations=cfg.SOLVER.MAX_ITER,
        iterations_this_run=iters,
        batch_size=cfg.SOLVER.IMS_PER_BATCH,
        train_seconds_this_run=round(train_seconds, 1),
        seconds_per_iteration=round(train_seconds / iters, 3) if iters > 0 else None,
        peak_memory_mib=round(peak_memory_mib(), 1),
        torch_threads=torch.get_num_threads(),
        keep_freed_memory=kept,
    )

    dataset = cfg.DATASETS.TEST[0]
    records = DatasetCatalog.get(dataset)[: args.num_vis]
    final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    report["pictures"] = save_prediction_grid(
        # RGB images in; eager: a few images of varied sizes, where an exported backend would
        # pay one export per padded size
        Predictor.from_config(cfg, weights=final, backend="eager"),
        records,
        MetadataCatalog.get(dataset),
        os.path.join(cfg.OUTPUT_DIR, "predictions_val.png"),
    )
    report["total_seconds_this_run"] = round(time.perf_counter() - started, 1)
    with open(report_path, "w") as f:
        json.dump(report, f, indent=2)

    logger.info("%-10s %s", "", "  ".join(f"{m:>6}" for _, m in HEADLINE))
    for name in ("untrained", "trained"):
        values = report[name]
        logger.info(
            "%-10s %s", name, "  ".join(f"{values.get(m, float('nan')):6.2f}" for _, m in HEADLINE)
        )
    logger.info(
        "%.3f s/iteration, peak memory %.0f MiB; report: %s; pictures: %s",
        report["seconds_per_iteration"] or float("nan"),
        report["peak_memory_mib"],
        report_path,
        report["pictures"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
