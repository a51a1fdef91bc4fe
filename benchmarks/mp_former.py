#!/usr/bin/env python
"""Does mask-piloted training help? Mask2Former vs MP-Former on the generated dataset.

Trains, with the same seeds, data (same images, same sampling order and augmentation draws
for a seed) and initial weights, three variants of the synthetic panoptic config and evaluates
PQ, AP and mIoU on ``synthetic_val_panoptic``:

- ``mask2former``: configs/synthetic/panoptic-segmentation/maskformer2_R18_synthetic.yaml
- ``mp_former``: its ``mp_former/`` variant (MODEL.MP_FORMER.ENABLED), same iterations; the
  ``*_learned_qpos.yaml`` one, which keeps Mask2Former's learned query positions, so that the
  only difference from ``mask2former`` is the piloting (same initial weights)
- ``mp_former_half``: the same with half the iterations (the schedule shrinks with them)

Each run is a child process (so that its peak resident memory, ``ru_maxrss``, is its own); a
run records its metrics, median seconds per training iteration (Detectron2's iteration timer,
data loading included, the first 3 iterations and then 20% of the rest left out as warm-up;
NaN for runs of 3 iterations or fewer) and peak RSS.
``tracemalloc`` is not used: it does not see PyTorch's tensor memory and slows Python down.
The script writes every run, the per-variant mean and standard deviation, and, for each
variant against ``mask2former``, the paired per-seed differences with their mean and a 95%
Student-t confidence interval to a JSON file (rewritten after every run, so that a stopped
benchmark keeps what it measured) and logs a table.

Examples::

    python benchmarks/mp_former.py --quick          # a few iterations on tiny images (minutes)
    python benchmarks/mp_former.py                  # 3 seeds x 3 variants, the config's iterations
    python benchmarks/mp_former.py --seeds 0 1 2 3 4 --variants mask2former mp_former
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIGS = os.path.join(_ROOT, "configs", "synthetic", "panoptic-segmentation")
PLAIN_CONFIG = os.path.join(_CONFIGS, "maskformer2_R18_synthetic.yaml")
MP_CONFIG = os.path.join(
    _CONFIGS, "mp_former", "maskformer2_R18_synthetic_mp_learned_qpos.yaml"
)
# name -> (config, fraction of the iterations)
VARIANTS = {
    "mask2former": (PLAIN_CONFIG, 1.0),
    "mp_former": (MP_CONFIG, 1.0),
    "mp_former_half": (MP_CONFIG, 0.5),
}
METRICS = {"PQ": ("panoptic_seg", "PQ"), "AP": ("segm", "AP"), "mIoU": ("sem_seg", "mIoU")}
# --quick: 64-pixel images, batch 2, few sampled points, no loader workers.
QUICK_OPTS = [
    "INPUT.IMAGE_SIZE", "64",
    "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "96",
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.WARMUP_ITERS", "0",
    "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "784",
]

logger = logging.getLogger("mask2former.benchmarks.mp_former")


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def run_one(spec: dict) -> dict:
    """Train and evaluate one (variant, seed) in this process; returns its record."""
    import torch
    from detectron2.utils.env import seed_all_rng

    import mask2former  # noqa: F401  (registers models, datasets and mappers)
    from mask2former.data.datasets.register_synthetic import register_all_synthetic
    from mask2former.engine.defaults import load_config
    from mask2former.engine.trainer import Trainer

    register_all_synthetic(spec["data_root"])
    cfg = load_config(spec["config"], spec["opts"])
    cfg.freeze()
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    # Same seed -> same initial weights (MP's label embedding does not advance the generator),
    # same sampling order and augmentations (NumPy's generator, which MP does not use).
    seed_all_rng(cfg.SEED)
    rss_before = _peak_rss_mb()
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    # Detectron2's IterationTimer skips its first 3 iterations; very short runs have no times.
    histories = trainer.storage.histories()
    iter_times = [v for v, _ in histories["time"].values()] if "time" in histories else []
    warm = iter_times[len(iter_times) // 5 :] or iter_times
    results = getattr(trainer, "_last_eval_results", None) or {}
    metrics = {
        name: float(results.get(task, {}).get(key, math.nan))
        for name, (task, key) in METRICS.items()
    }
    return {
        **{k: spec[k] for k in ("variant", "seed", "iters")},
        "metrics": metrics,
        "seconds_per_iter": statistics.median(warm) if warm else math.nan,
        "train_and_eval_seconds": wall,
        "peak_rss_mb": _peak_rss_mb(),
        "peak_rss_mb_before_build": rss_before,
        "torch_threads": torch.get_num_threads(),
    }


def _child(spec: dict, log_path: str) -> dict:
    """Run :func:`run_one` in a fresh Python process (own peak memory), log to ``log_path``."""
    result_path = log_path[: -len(".log")] + ".json"
    with open(log_path, "w") as log:
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec),
             "--worker-output", result_path],
            stdout=log, stderr=subprocess.STDOUT, cwd=_ROOT,
            env=dict(os.environ, PYTHONWARNINGS="ignore"),
        )
    if proc.returncode != 0:
        with open(log_path) as f:
            tail = f.read()[-4000:]
        raise RuntimeError(f"run {spec['variant']} seed {spec['seed']} failed "
                           f"(log {log_path}):\n{tail}")
    with open(result_path) as f:
        return json.load(f)


def summarize(runs: list[dict]) -> dict:
    """Per variant: mean and standard deviation (n-1; 0 for one run) of every number."""
    summary = {}
    for variant in VARIANTS:
        rows = [r for r in runs if r["variant"] == variant]
        if not rows:
            continue
        values = {f"{m}": [r["metrics"][m] for r in rows] for m in METRICS}
        values["seconds_per_iter"] = [r["seconds_per_iter"] for r in rows]
        values["peak_rss_mb"] = [r["peak_rss_mb"] for r in rows]
        summary[variant] = {
            "runs": len(rows),
            "iters": rows[0]["iters"],
            **{
                k: {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0}
                for k, v in values.items()
            },
        }
    return summary


def paired_differences(runs: list[dict], baseline: str = "mask2former") -> dict:
    """Per variant and metric: (variant - baseline) on each seed both ran, with the mean and a
    95% Student-t confidence interval of the mean difference (NaN bounds for fewer than 2
    seeds). ``excludes_zero`` is what a claim in the README needs."""
    from scipy import stats

    by_key = {(r["variant"], r["seed"]): r for r in runs}
    out = {}
    for variant in VARIANTS:
        if variant == baseline:
            continue
        seeds = sorted(s for v, s in by_key if v == variant and (baseline, s) in by_key)
        if not seeds:
            continue
        out[variant] = {}
        for m in METRICS:
            diffs = [
                by_key[(variant, s)]["metrics"][m] - by_key[(baseline, s)]["metrics"][m]
                for s in seeds
            ]
            mean = statistics.fmean(diffs)
            if len(diffs) > 1:
                half = stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs)
                half /= math.sqrt(len(diffs))
            else:
                half = math.nan
            out[variant][m] = {
                "seeds": seeds,
                "differences": diffs,
                "mean": mean,
                "ci95": [mean - half, mean + half],
                "excludes_zero": bool(abs(mean) > half),
            }
    return out


def format_paired(paired: dict, baseline: str = "mask2former") -> str:
    """One line per variant and metric: mean difference [95% CI] over n seeds."""
    lines = []
    for variant, metrics in paired.items():
        for m, d in metrics.items():
            lo, hi = d["ci95"]
            verdict = "excludes 0" if d["excludes_zero"] else "includes 0"
            lines.append(
                f"{variant} - {baseline} {m:>5}: {d['mean']:+.2f} [{lo:+.2f}, {hi:+.2f}] "
                f"over {len(d['seeds'])} seeds ({verdict})"
            )
    return "\n".join(lines)


def format_table(summary: dict) -> str:
    """The summary as a plain-text table, mean ± std."""
    columns = [*METRICS, "seconds_per_iter", "peak_rss_mb"]
    header = f"{'variant':<16}{'iters':>7}{'runs':>6}" + "".join(f"{c:>22}" for c in columns)
    lines = [header, "-" * len(header)]
    for variant, s in summary.items():
        cells = "".join(f"{s[c]['mean']:.3f} ± {s[c]['std']:.3f}".rjust(22) for c in columns)
        lines.append(f"{variant:<16}{s['iters']:>7}{s['runs']:>6}{cells}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny data and images, --iters 8, to check that the script runs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iters", type=int, default=0,
                        help="full-schedule iterations (default: the config's SOLVER.MAX_ITER)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs trained at once (each a child process)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--data-root", default="",
                        help="generated dataset (default: $M2F_SYNTHETIC_ROOT or "
                             "datasets/generated; --quick: output/benchmarks/synthetic_quick)")
    parser.add_argument("--work-dir", default="", help="run folders (default: output/...)")
    parser.add_argument("--output", default="",
                        help="JSON file (default: benchmarks/results/; --quick: the work dir)")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    parser.add_argument("--worker-output", default="", help=argparse.SUPPRESS)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.worker:
        record = run_one(json.loads(args.worker))
        with open(args.worker_output, "w") as f:
            json.dump(record, f, indent=2)
        return record

    from mask2former.data.synthetic import default_synthetic_root, generate_synthetic_dataset
    from mask2former.engine.defaults import load_config

    tag = "mp_former_quick" if args.quick else "mp_former"
    work_dir = args.work_dir or os.path.join(_ROOT, "output", "benchmarks", tag)
    if args.quick:
        data_root = args.data_root or os.path.join(_ROOT, "output", "benchmarks",
                                                   "synthetic_quick")
        generate_synthetic_dataset(data_root, num_train=8, num_val=3, min_size=64, max_size=96,
                                   progress=False)
        iters = args.iters or 8
        opts = QUICK_OPTS + list(args.opts)
    else:
        data_root = args.data_root or default_synthetic_root()
        generate_synthetic_dataset(data_root, progress=False)
        iters = args.iters or load_config(PLAIN_CONFIG, args.opts).SOLVER.MAX_ITER
        opts = list(args.opts)

    specs = []
    for seed in args.seeds:
        for variant in args.variants:
            config, fraction = VARIANTS[variant]
            n = max(1, round(iters * fraction))
            out_dir = os.path.join(work_dir, f"{variant}_seed{seed}")
            specs.append({
                "variant": variant, "seed": seed, "iters": n, "config": config,
                "data_root": data_root,
                "opts": opts + ["SEED", str(seed), "SOLVER.MAX_ITER", str(n),
                                "SOLVER.CHECKPOINT_PERIOD", str(10 * n), "DATALOADER.NUM_WORKERS",
                                "0", "MODEL.DEVICE", "cpu", "OUTPUT_DIR", out_dir],
            })
    os.makedirs(work_dir, exist_ok=True)

    def train(spec: dict) -> dict:
        logger.info("training %s, seed %d, %d iterations ...", spec["variant"], spec["seed"],
                    spec["iters"])
        log_path = os.path.join(work_dir, f"{spec['variant']}_seed{spec['seed']}.log")
        return _child(spec, log_path)

    # Runs are independent child processes; --jobs > 1 runs several at once (their seconds per
    # iteration then include the contention, their metrics do not change).
    runs = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for record in pool.map(train, specs):
            logger.info("  %s seed %d: %s", record["variant"], record["seed"],
                        json.dumps(record["metrics"]))
            runs.append(record)
            output = _write_result(args, opts, data_root, work_dir, tag, runs)

    summary = summarize(runs)
    logger.info("\n%s\n%s", format_table(summary), format_paired(paired_differences(runs)))
    logger.info("Wrote %s", output)
    with open(output) as f:
        return json.load(f)


def _write_result(args, opts, data_root, work_dir, tag, runs) -> str:
    """(Re)write the result file with every run so far; returns its path."""
    summary = summarize(runs)
    result = {
        "question": "does mask-piloted training help? (synthetic panoptic, R-18)",
        "quick": args.quick,
        "data_root": data_root,
        "overrides": opts,
        "seeds": args.seeds,
        "variants": {v: {"config": os.path.relpath(VARIANTS[v][0], _ROOT),
                         "iteration_fraction": VARIANTS[v][1]} for v in args.variants},
        "summary": summary,
        "paired_vs_mask2former": paired_differences(runs),
        "runs": runs,
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }
    # Quick runs prove that the script works; their numbers mean nothing, so not under results/.
    results_dir = work_dir if args.quick else os.path.join(_ROOT, "benchmarks", "results")
    output = args.output or os.path.join(results_dir, f"{tag}.json")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        json.dump(result, f, indent=2)
    return output


if __name__ == "__main__":
    main()
