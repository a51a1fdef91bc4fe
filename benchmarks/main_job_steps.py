#!/usr/bin/env python
"""Training-step cost of the main job's config and of the changes that make it fast.

Builds one trainer per variant of a synthetic config (default: the main job's panoptic config)
and runs their training steps interleaved (step i of every variant, then step i + 1), so that a
change of machine load hits every variant alike. Each step is timed twice:

- CPU seconds of this process (``time.process_time``), which a busy machine inflates far less
  than the wall clock: with ``--threads 1`` it is the figure to compare on a shared machine;
- wall seconds (``time.perf_counter``), the figure to quote on an idle machine.

Data loading runs in this process (``DATALOADER.NUM_WORKERS 0``), so both figures include the
mapper. The first ``--warmup`` steps are left out. The script prints a table of seconds per step
and the ratio to the first variant, and writes them to ``benchmarks/results/<name>.json``.

Examples::

    python benchmarks/main_job_steps.py                       # the default variants, 1 thread
    python benchmarks/main_job_steps.py --threads 2 --steps 10
    python benchmarks/main_job_steps.py --variant old "INPUT.IMAGE_SIZE 256 ..." --variant new ""
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/synthetic/panoptic-segmentation/maskformer2_R18_synthetic.yaml"
# The main job before issue 16 (256-px crops, 6 decoder layers, 56 x 56 points), each change
# alone, and the main job's config as it is now (no overrides).
BEFORE = (
    "INPUT.IMAGE_SIZE 256 INPUT.MIN_SCALE 0.5 INPUT.MAX_SCALE 1.5 "
    "MODEL.MASK_FORMER.DEC_LAYERS 7 MODEL.MASK_FORMER.TRAIN_NUM_POINTS 3136"
)
DEFAULT_VARIANTS = {
    "before (256 crops, 6 layers, 3136 points)": BEFORE,
    "192-px crops": BEFORE.replace("IMAGE_SIZE 256", "IMAGE_SIZE 192")
    .replace("MIN_SCALE 0.5", "MIN_SCALE 0.6")
    .replace("MAX_SCALE 1.5", "MAX_SCALE 1.4"),
    "3 decoder layers": BEFORE.replace("DEC_LAYERS 7", "DEC_LAYERS 4"),
    "1024 points": BEFORE.replace("POINTS 3136", "POINTS 1024"),
    "main job now": "",
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default=CONFIG)
    parser.add_argument(
        "--variant",
        nargs=2,
        action="append",
        metavar=("NAME", "OVERRIDES"),
        help="a variant: its name and its KEY VALUE overrides in one string (repeatable; "
        "default: the main job before issue 16, each change alone, and the main job now)",
    )
    parser.add_argument("--steps", type=int, default=6, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--name", default="main_job_steps", help="results file name")
    return parser.parse_args(argv)


def build_trainer(config_file: str, overrides: list[str], workdir: str):
    """A Detectron2 trainer of ``config_file`` with ``overrides``, its data loaded in-process."""
    from mask2former.engine.defaults import setup
    from mask2former.engine.trainer import Trainer

    args = argparse.Namespace(
        config_file=config_file,
        opts=overrides
        + ["DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", workdir, "SOLVER.CHECKPOINT_PERIOD"]
        + ["1000000", "SOLVER.MAX_ITER", "1000000"],
        num_gpus=1,
        num_machines=1,
        machine_rank=0,
        resume=False,
        eval_only=False,
        dist_url="auto",
    )
    trainer = Trainer(setup(args))
    trainer.resume_or_load(resume=False)
    return trainer


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    sys.path.insert(0, ROOT)
    os.chdir(ROOT)
    from detectron2.utils.events import EventStorage

    import mask2former  # noqa: F401  (registers the components and datasets)
    from mask2former.data.synthetic import generate_synthetic_dataset

    generate_synthetic_dataset(progress=False)
    variants = dict(args.variant) if args.variant else DEFAULT_VARIANTS
    trainers = {
        name: build_trainer(args.config_file, opts.split(), f"output/bench_steps/{i}")
        for i, (name, opts) in enumerate(variants.items())
    }
    logging.getLogger().setLevel(logging.WARNING)
    cpu = {name: [] for name in trainers}
    wall = {name: [] for name in trainers}
    with EventStorage(0) as storage:
        for step in range(args.warmup + args.steps):
            for name, trainer in trainers.items():
                trainer.storage = storage
                trainer._trainer.iter = step
                c0, w0 = time.process_time(), time.perf_counter()
                trainer._trainer.run_step()
                if step >= args.warmup:
                    cpu[name].append(time.process_time() - c0)
                    wall[name].append(time.perf_counter() - w0)

    first = next(iter(trainers))
    rows = {}
    for name in trainers:
        c, w = sum(cpu[name]) / args.steps, sum(wall[name]) / args.steps
        rows[name] = {
            "overrides": variants[name],
            "cpu_s_per_step": round(c, 4),
            "wall_s_per_step": round(w, 4),
            "cpu_ratio": round(c / (sum(cpu[first]) / args.steps), 3),
            "wall_ratio": round(w / (sum(wall[first]) / args.steps), 3),
        }
    result = {
        "config": args.config_file,
        "threads": args.threads,
        "steps": args.steps,
        "warmup": args.warmup,
        "loadavg_at_end": open("/proc/loadavg").read().split()[:3],
        "cpu": platform.processor() or platform.machine(),
        "variants": rows,
    }
    print(f"{'variant':45s} {'CPU s/step':>10s} {'ratio':>6s} {'wall s/step':>11s} {'ratio':>6s}")
    for name, row in rows.items():
        print(
            f"{name:45s} {row['cpu_s_per_step']:10.3f} {row['cpu_ratio']:6.3f} "
            f"{row['wall_s_per_step']:11.3f} {row['wall_ratio']:6.3f}"
        )
    out = os.path.join(ROOT, "benchmarks", "results", f"{args.name}.json")
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"written to {out}")
    return result


if __name__ == "__main__":
    main()
