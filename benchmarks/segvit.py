#!/usr/bin/env python
"""SegViT benchmarks: GFLOPs and CPU time at 640 x 640, and SegViT-tiny vs Mask2Former R18 on
the generated data.

``gflops`` (the default subcommand) builds the ADE20K ViT-L and ViT-L Shrunk configs with random
weights (FLOPs and time do not depend on them) and measures, on one 640 x 640 image (batch 1,
one sliding window: the reference's test crop):

- GFLOPs with fvcore (one multiply-add = one FLOP, the convention of the paper's
  ``tools/get_flops_fvcore.py``) of the network: backbone + head, without the final bilinear
  upsampling and the post-processing (fvcore does not count them). Fused attention
  (``scaled_dot_product_attention``) is counted as its two matrix products, and
  ``nn.MultiheadAttention``'s fused inference op as its projections and products;
- the median CPU time of ``forward_network`` over ``--runs`` calls after one warm-up call.

It prints the figures next to the paper's (637.9 and 373.5 GFLOPs, -41 %) and writes them to
``benchmarks/results/segvit_gflops_640.json``.

``synthetic`` trains, per seed, SegViT-tiny (``segvit_tiny_synthetic.yaml``) and Mask2Former R18
semantic (``maskformer2_R18_synthetic.yaml``) at the same budget: Mask2Former takes SegViT-tiny's
iterations, batch, crop, training and test resize (the keys in ``BUDGET_KEYS``); each keeps its
own model, optimizer recipe and augmentation. Each run is a child process (``torch`` threads
``--threads``, data loading in the process), trained with ``train_net.py``'s ``Trainer`` on
``synthetic_train_sem_seg`` and evaluated (mIoU) on ``synthetic_val_sem_seg`` after training
(and before, with ``--eval-before``). A run records the mIoU, the total loss at the start and
end, the median wall seconds per training iteration (Detectron2's timer, data loading included;
the first 20 % of the iterations left out as warm-up), the median CPU seconds per iteration (the
process's CPU time, all threads: the figure other processes' load changes least) and the
1-minute load average sampled every 10 s during training. The two models of a seed run one after
the other (who goes first alternates between seeds) or, with ``--parallel``, at the same time:
either way their times are taken under similar load. Results go to
``benchmarks/results/segvit_vs_m2f_synthetic.json``.

Examples::

    python benchmarks/segvit.py --runs 3                         # = gflops --runs 3
    python benchmarks/segvit.py synthetic                        # 3 seeds, the config's budget
    python benchmarks/segvit.py synthetic --seeds 0 --iters 100 --parallel --threads 1
    python benchmarks/segvit.py synthetic --models segvit SOLVER.BASE_LR 0.002  # SegViT overrides
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from detectron2.engine import HookBase
from detectron2.modeling import build_model
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape

import mask2former  # noqa: F401  (registers the model components)
from mask2former.config import load_config
from mask2former.modeling.inference import InferenceNetwork

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from inference_speed import _cpu_name  # noqa: E402

logger = logging.getLogger("mask2former.benchmarks.segvit")

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIGS = os.path.join(_ROOT, "configs", "ade20k", "semantic-segmentation", "segvit")
MODELS = {
    "ViT-L": ("segvit_vit-l_640_160k.yaml", 637.9),
    "ViT-L Shrunk": ("segvit_vit-l_shrunk_640_160k.yaml", 373.5),
}
_SYNTHETIC = os.path.join(_ROOT, "configs", "synthetic", "semantic-segmentation")
# synthetic: name -> config
TRAINED = {
    "segvit": os.path.join(_SYNTHETIC, "segvit_tiny_synthetic.yaml"),
    "mask2former": os.path.join(_SYNTHETIC, "maskformer2_R18_synthetic.yaml"),
}
# The budget Mask2Former takes from SegViT-tiny's config.
BUDGET_KEYS = (
    "SOLVER.MAX_ITER",
    "SOLVER.IMS_PER_BATCH",
    "INPUT.CROP.SIZE",
    "INPUT.MIN_SIZE_TRAIN",
    "INPUT.MAX_SIZE_TRAIN",
    "INPUT.SIZE_DIVISIBILITY",
    "INPUT.MIN_SIZE_TEST",
    "INPUT.MAX_SIZE_TEST",
)


def _sdpa_flops(inputs: list[Any], outputs: list[Any]) -> int:
    """aten::scaled_dot_product_attention: q k^T and attn v, B*h*Lq*Lk*d multiply-adds each."""
    q, k = get_shape(inputs[0]), get_shape(inputs[1])
    *batch, lq, d = q
    lk = k[-2]
    n = 1
    for b in batch:
        n *= b
    return 2 * n * lq * lk * d


def _native_mha_flops(inputs: list[Any], outputs: list[Any]) -> int:
    """aten::_native_multi_head_attention (nn.MultiheadAttention's inference path): the q, k, v
    and output projections and the two attention products."""
    q, k = get_shape(inputs[0]), get_shape(inputs[1])  # (B, Lq, E), (B, Lk, E)
    batch, lq, dim = q
    lk = k[1]
    projections = (2 * lq + 2 * lk) * dim * dim
    return batch * (projections + 2 * lq * lk * dim)


def measure(config: str, size: int, runs: int) -> dict[str, Any]:
    """GFLOPs and seconds per image of ``config`` at size x size."""
    cfg = load_config(os.path.join(_CONFIGS, config), ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
    model = build_model(cfg).eval()
    network = InferenceNetwork(model).eval()
    image = torch.randn(1, 3, size, size)  # (1, 3, H, W)
    with torch.no_grad():
        flops = FlopCountAnalysis(network, (image,))
        flops.set_op_handle("aten::scaled_dot_product_attention", _sdpa_flops)
        flops.set_op_handle("aten::_native_multi_head_attention", _native_mha_flops)
        flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        total = flops.total() / 1e9
        by_module = {
            k: v / 1e9
            for k, v in flops.by_module().items()
            if k in ("model.backbone", "model.sem_seg_head")
        }
        unsupported = dict(flops.unsupported_ops())
        network(image)  # warm-up
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            network(image)
            times.append(time.perf_counter() - start)
    return {
        "config": config,
        "gflops": round(total, 1),
        "gflops_by_module": {k: round(v, 1) for k, v in by_module.items()},
        "uncounted_ops": unsupported,
        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "cpu_seconds_per_image_median": round(statistics.median(times), 2),
        "cpu_seconds_per_image": [round(t, 2) for t in times],
    }


def _cfg_value(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def budget_opts(segvit_cfg) -> list[str]:
    """``KEY VALUE`` overrides that give another config SegViT-tiny's budget."""
    opts = []
    for key in BUDGET_KEYS:
        opts += [key, repr(_cfg_value(segvit_cfg, key))]
    return opts


class _LoadSampler:
    """The 1-minute load average, sampled every ``period`` seconds in a thread."""

    def __init__(self, period: float = 10.0):
        self.samples = [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period,), daemon=True)

    def _run(self, period: float) -> None:
        while not self._stop.wait(period):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> _LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])


class _CpuTime(HookBase):
    """CPU seconds of this process (all its threads) per training iteration, data loading
    included; unlike wall time, barely changed by other processes' load."""

    def __init__(self):
        self.seconds: list[float] = []
        self._start = 0.0

    def before_step(self):
        self._start = time.process_time()

    def after_step(self):
        self.seconds.append(time.process_time() - self._start)


def train_one(spec: dict[str, Any]) -> dict[str, Any]:
    """Train and evaluate one (model, seed) in this process; returns its record."""
    from detectron2.utils.env import seed_all_rng

    from mask2former.data.datasets.register_synthetic import register_all_synthetic
    from mask2former.engine.trainer import Trainer

    torch.set_num_threads(spec["threads"])
    register_all_synthetic(spec["data_root"])
    cfg = load_config(spec["config"], spec["opts"])
    cfg.freeze()
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    seed_all_rng(cfg.SEED)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    before = Trainer.test(cfg, trainer.model)["sem_seg"]["mIoU"] if spec["eval_before"] else None
    cpu = _CpuTime()
    trainer.register_hooks([cpu])
    start = time.perf_counter()
    with _LoadSampler() as load:
        trainer.train()
    wall = time.perf_counter() - start
    histories = trainer.storage.histories()
    times = [v for v, _ in histories["time"].values()] if "time" in histories else []
    warm = times[len(times) // 5 :] or times
    data = [v for v, _ in histories["data_time"].values()] if "data_time" in histories else []
    losses = [v for v, _ in histories["total_loss"].values()]
    window = max(1, min(20, len(losses) // 5))
    return {
        "model": spec["model"],
        "seed": spec["seed"],
        "config": os.path.relpath(spec["config"], _ROOT),
        "opts": spec["opts"],
        "iters": cfg.SOLVER.MAX_ITER,
        "mIoU_before": before,
        "mIoU": trainer._last_eval_results["sem_seg"]["mIoU"],
        "total_loss_start": statistics.median(losses[:window]),
        "total_loss_end": statistics.median(losses[-window:]),
        "seconds_per_iter": statistics.median(warm) if warm else float("nan"),
        "data_seconds_per_iter": statistics.median(data) if data else float("nan"),
        "cpu_seconds_per_iter": statistics.median(cpu.seconds[len(cpu.seconds) // 5 :]),
        "train_seconds": round(wall, 1),
        "load_average_1min": {
            "mean": round(statistics.fmean(load.samples), 2),
            "min": min(load.samples),
            "max": max(load.samples),
        },
        "parameters_m": round(sum(p.numel() for p in trainer.model.parameters()) / 1e6, 2),
        "torch_threads": torch.get_num_threads(),
    }


def _child(spec: dict[str, Any], log_path: str) -> dict[str, Any]:
    """:func:`train_one` in a fresh Python process, its log in ``log_path``."""
    result_path = log_path[: -len(".log")] + ".json"
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS=str(spec["threads"]))
    with open(log_path, "w") as log:
        proc = subprocess.run(
            [
                sys.executable,
                os.path.abspath(__file__),
                "synthetic",
                "--worker",
                json.dumps(spec),
                "--worker-output",
                result_path,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=_ROOT,
            env=env,
        )
    if proc.returncode != 0:
        with open(log_path) as f:
            tail = f.read()[-4000:]
        raise RuntimeError(f"{spec['model']} seed {spec['seed']} failed (log {log_path}):\n{tail}")
    with open(result_path) as f:
        return json.load(f)


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model: mean and standard deviation (n-1; 0 for one run) over seeds."""
    keys = (
        "mIoU_before",
        "mIoU",
        "total_loss_start",
        "total_loss_end",
        "seconds_per_iter",
        "cpu_seconds_per_iter",
        "train_seconds",
    )
    summary = {}
    for model in dict.fromkeys(r["model"] for r in runs):
        rows = [r for r in runs if r["model"] == model]
        summary[model] = {
            "runs": len(rows),
            "iters": rows[0]["iters"],
            "parameters_m": rows[0]["parameters_m"],
        }
        for key in keys:
            values = [r[key] for r in rows]
            if None in values:  # mIoU_before without --eval-before
                continue
            summary[model][key] = {
                "mean": round(statistics.fmean(values), 3),
                "std": round(statistics.stdev(values), 3) if len(values) > 1 else 0.0,
            }
    if "segvit" in summary and "mask2former" in summary:
        for key in ("seconds_per_iter", "cpu_seconds_per_iter"):
            pairs: dict[int, dict[str, float]] = {}
            for r in runs:
                pairs.setdefault(r["seed"], {})[r["model"]] = r[key]
            summary[f"{key}_ratio_segvit_over_mask2former"] = [
                round(p["segvit"] / p["mask2former"], 3) for p in pairs.values() if len(p) == 2
            ]
    return summary


def synthetic(args) -> dict[str, Any]:
    """The ``synthetic`` subcommand (module docstring)."""
    from mask2former.data.synthetic import (
        default_synthetic_root,
        generate_synthetic_dataset,
    )

    data_root = generate_synthetic_dataset(
        args.data_root or default_synthetic_root(), progress=False
    )
    segvit_opts = list(args.opts)
    if args.iters:
        segvit_opts += ["SOLVER.MAX_ITER", str(args.iters)]
    segvit_cfg = load_config(TRAINED["segvit"], segvit_opts)
    model_opts = {"segvit": segvit_opts, "mask2former": budget_opts(segvit_cfg)}
    work_dir = args.work_dir or os.path.join(_ROOT, "output", "benchmarks", "segvit_vs_m2f")
    os.makedirs(work_dir, exist_ok=True)
    runs = []
    for seed in args.seeds:
        order = args.models if seed % 2 == 0 else args.models[::-1]  # alternate who goes first
        specs = []
        for model in order:
            name = f"{model}_seed{seed}"
            spec = {
                "model": model,
                "seed": seed,
                "config": TRAINED[model],
                "data_root": data_root,
                "threads": args.threads,
                "eval_before": args.eval_before,
                "opts": model_opts[model]
                + [
                    "SEED",
                    str(seed),
                    "MODEL.DEVICE",
                    "cpu",
                    "DATALOADER.NUM_WORKERS",
                    "0",
                    "SOLVER.CHECKPOINT_PERIOD",
                    "1000000",
                    "TEST.EVAL_PERIOD",
                    "0",
                    "OUTPUT_DIR",
                    os.path.join(work_dir, name),
                ],
            }
            specs.append(spec)
        logger.info(
            "Training %s, seed %d (load average %.2f) ...",
            " and ".join(order) if args.parallel else " then ".join(order),
            seed,
            os.getloadavg()[0],
        )
        logs = [os.path.join(work_dir, f"{s['model']}_seed{seed}.log") for s in specs]
        with ThreadPoolExecutor(len(specs) if args.parallel else 1) as pool:
            records = list(pool.map(_child, specs, logs))
        for record in records:
            logger.info(
                "  %s: mIoU %s -> %.1f, loss %.2f -> %.2f, %.3f s / iteration, %.3f CPU s / "
                "iteration (load %.2f)",
                record["model"],
                "?" if record["mIoU_before"] is None else f"{record['mIoU_before']:.1f}",
                record["mIoU"],
                record["total_loss_start"],
                record["total_loss_end"],
                record["seconds_per_iter"],
                record["cpu_seconds_per_iter"],
                record["load_average_1min"]["mean"],
            )
        runs += records
    summary = summarize(runs)
    result = {
        "question": "SegViT-tiny vs Mask2Former R18 (semantic) on the generated data, same "
        "iterations, batch, crop and resize",
        "budget": {k: _cfg_value(segvit_cfg, k) for k in BUDGET_KEYS},
        "segvit_overrides": list(args.opts),
        "data_root": data_root,
        "summary": summary,
        "runs": runs,
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2)
    for model, s in summary.items():
        if isinstance(s, dict):
            logger.info(
                "%-12s mIoU %.1f ± %.1f, %.3f ± %.3f s / iteration, %d runs",
                model,
                s["mIoU"]["mean"],
                s["mIoU"]["std"],
                s["seconds_per_iter"]["mean"],
                s["seconds_per_iter"]["std"],
                s["runs"],
            )
    logger.info("Wrote %s", args.output)
    return result


def gflops(args) -> dict[str, Any]:
    """The ``gflops`` subcommand (module docstring)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict[str, Any] = {
        "size": args.size,
        "torch_threads": torch.get_num_threads(),
        "models": {},
    }
    for name, (config, paper) in MODELS.items():
        logger.info("Measuring %s (%s) ...", name, config)
        result = measure(config, args.size, args.runs)
        result["paper_gflops"] = paper
        results["models"][name] = result
        logger.info(
            "%s: %.1f GFLOPs (paper %.1f), %.2f s per image on the CPU",
            name,
            result["gflops"],
            paper,
            result["cpu_seconds_per_image_median"],
        )
    plain, shrunk = (results["models"][n]["gflops"] for n in MODELS)
    results["shrunk_reduction_percent"] = round(100 * (1 - shrunk / plain), 1)
    logger.info(
        "Shrunk: %.1f %% fewer GFLOPs (paper 41 %%)",
        results["shrunk_reduction_percent"],
    )
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(results, f, indent=2)
    logger.info("Wrote %s", args.output)
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("gflops", "synthetic", "-h", "--help"):
        argv.insert(0, "gflops")  # the subcommand before there were two
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    results = os.path.join(_ROOT, "benchmarks", "results")

    flops = commands.add_parser("gflops", help="GFLOPs and CPU time at 640 x 640")
    flops.add_argument("--size", type=int, default=640, help="input height and width")
    flops.add_argument("--runs", type=int, default=3, help="timed calls per model")
    flops.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    flops.add_argument("--output", default=os.path.join(results, "segvit_gflops_640.json"))
    flops.set_defaults(func=gflops)

    train = commands.add_parser("synthetic", help="SegViT-tiny vs Mask2Former R18, trained")
    train.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    train.add_argument(
        "--iters",
        type=int,
        default=0,
        help="iterations of both (default: the SegViT-tiny config's)",
    )
    train.add_argument("--models", nargs="+", default=list(TRAINED), choices=list(TRAINED))
    train.add_argument("--threads", type=int, default=2, help="torch CPU threads per run")
    train.add_argument(
        "--parallel", action="store_true", help="train the models of a seed at the same time"
    )
    train.add_argument(
        "--eval-before", action="store_true", help="also evaluate the initial (random) weights"
    )
    train.add_argument(
        "--data-root",
        default="",
        help="generated dataset (default: $M2F_SYNTHETIC_ROOT or "
        "datasets/generated; written if incomplete)",
    )
    train.add_argument(
        "--work-dir",
        default="",
        help="run folders and logs (default: output/benchmarks/segvit_vs_m2f)",
    )
    train.add_argument("--output", default=os.path.join(results, "segvit_vs_m2f_synthetic.json"))
    train.add_argument("--worker", default="", help=argparse.SUPPRESS)
    train.add_argument("--worker-output", default="", help=argparse.SUPPRESS)
    train.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        help="SegViT-tiny config overrides KEY VALUE (budget keys reach both)",
    )
    train.set_defaults(func=synthetic)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "synthetic" and args.worker:
        record = train_one(json.loads(args.worker))
        with open(args.worker_output, "w") as f:
            json.dump(record, f, indent=2)
        return record
    return args.func(args)


if __name__ == "__main__":
    main()
