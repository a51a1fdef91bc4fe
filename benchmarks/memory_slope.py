#!/usr/bin/env python
"""Does memory stay flat? Resident memory over a long CPU training run and over video inference.

1. ``train``: trains the synthetic config (``Trainer``, one process, its data-loader workers)
   for ``--iters`` iterations (default 1,000) and samples the resident set size (RSS) every
   ``--every`` iterations (default 50): of the main process, and of the main process plus its
   children (the loader workers).
2. ``video``: writes a ``--frames``-frame video (default 500) of moving shapes, runs it through
   the demo's video path (``VisualizationDemo.run_on_video``: read, predict, draw) into an mp4,
   and samples RSS every ``--every`` frames.

For each it fits a line to the samples (least squares) and reports the slope in MiB per 100
iterations / frames: after the warm-up (all samples but the one taken before the first
iteration / frame), over the second half, and over all samples. Prints the figures and writes
``benchmarks/results/memory_slope.json``.

Usage::

    nice -n 10 python benchmarks/memory_slope.py [--part train|video|both] [--iters 1000]
        [--frames 500] [--threads 2]

The training part takes about as long as the default run for 1,000 iterations (0.9 s per
iteration on 2 idle cores); ``--iters 200 --frames 100`` is a quick look.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import tempfile
import time

import cv2
import numpy as np
import torch
from detectron2.engine import HookBase

import mask2former  # noqa: F401  (registers the components and datasets)
from mask2former.config import load_config
from mask2former.data.synthetic import generate_synthetic_dataset
from mask2former.engine.trainer import Trainer
from mask2former.utils.allocator import keep_freed_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(
    ROOT,
    "configs",
    "synthetic",
    "panoptic-segmentation",
    "maskformer2_R18_synthetic.yaml",
)
RESULT = os.path.join(ROOT, "benchmarks", "results", "memory_slope.json")
_PAGE_MIB = os.sysconf("SC_PAGE_SIZE") / 2**20


def _rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` in MiB (0 when it has gone)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE_MIB
    except OSError:
        return 0.0


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (data-loader workers)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # after "pid (name)"
        except OSError:
            continue
        if int(fields[1]) == pid:  # fields: state, ppid, ...
            found.append(int(entry))
    return found


def sample() -> dict:
    pid = os.getpid()
    main = _rss_mib(pid)
    return {
        "main_mib": round(main, 1),
        "with_children_mib": round(main + sum(_rss_mib(c) for c in _children(pid)), 1),
    }


def slopes(points: list[int], values: list[float]) -> dict:
    """Least-squares slopes in MiB per 100 units: over all samples; after the warm-up (without
    the sample taken before the first iteration / frame, which the first allocations dwarf); over
    the second half."""
    x, y = np.asarray(points, float), np.asarray(values, float)

    def fit(start: int) -> float:
        if len(x) - start < 2:
            return float("nan")
        return float(np.polyfit(x[start:], y[start:], 1)[0] * 100)

    fits = {"all": fit(0), "after_warmup": fit(1), "second_half": fit(len(x) // 2)}
    return {k: round(v, 3) for k, v in fits.items()}


def _summary(points: list[int], samples: list[dict], unit: str) -> dict:
    out = {
        "unit": f"MiB per 100 {unit}",
        "every": points[1] - points[0] if len(points) > 1 else None,
        "samples": [dict(at=p, **s) for p, s in zip(points, samples)],
    }
    for key in ("main_mib", "with_children_mib"):
        values = [s[key] for s in samples]
        out[key.replace("_mib", "")] = {
            "slope": slopes(points, values),
            "first_mib": values[0],
            "last_mib": values[-1],
            "peak_mib": max(values),
        }
    return out


class _SampleRSS(HookBase):
    def __init__(self, every: int):
        self.every, self.points, self.samples = every, [], []

    def before_train(self):
        self.points.append(self.trainer.iter)
        self.samples.append(sample())

    def after_step(self):
        done = self.trainer.iter + 1
        if done % self.every == 0:
            self.points.append(done)
            self.samples.append(sample())
            print(f"iteration {done}: {self.samples[-1]}", flush=True)


def measure_training(args, work: str) -> dict:
    data_root = generate_synthetic_dataset(progress=True)  # the default run's data
    cfg = load_config(
        args.config_file,
        [
            "SOLVER.MAX_ITER",
            str(args.iters),
            "DATASETS.TEST",
            "()",
            "OUTPUT_DIR",
            os.path.join(work, "train"),
            *args.opts,
        ],
    )
    cfg.freeze()
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    rss = _SampleRSS(args.every)
    trainer.register_hooks([rss])
    start = time.perf_counter()
    trainer.train()
    out = _summary(rss.points, rss.samples, "iterations")
    out.update(
        iterations=args.iters,
        seconds=round(time.perf_counter() - start, 1),
        data_root=data_root,
        loader_workers=cfg.DATALOADER.NUM_WORKERS,
        batch_size=cfg.SOLVER.IMS_PER_BATCH,
    )
    return out


def write_video(path: str, frames: int, size: int = 256, fps: float = 25.0) -> None:
    """``frames`` BGR frames of shapes moving over a fixed textured background (mp4v)."""
    rng = np.random.default_rng(0)
    background = cv2.GaussianBlur(
        rng.integers(0, 255, (size, size, 3), dtype=np.uint8), (0, 0), 4
    )  # (S, S, 3)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (size, size))
    for t in range(frames):
        frame = background.copy()
        for k, colour in enumerate(((40, 40, 220), (40, 200, 40), (220, 120, 40))):
            angle = 2 * np.pi * (t / 100 + k / 3)
            centre = (
                int(size / 2 + size / 3 * np.cos(angle)),
                int(size / 2 + size / 3 * np.sin(angle)),
            )
            if k == 1:
                cv2.rectangle(
                    frame,
                    (centre[0] - 20, centre[1] - 20),
                    (centre[0] + 20, centre[1] + 20),
                    colour,
                    -1,
                )
            else:
                cv2.circle(frame, centre, 22, colour, -1)
        writer.write(frame)
    writer.release()


def measure_video(args, work: str) -> dict:
    spec = importlib.util.spec_from_file_location("m2f_demo", os.path.join(ROOT, "demo", "demo.py"))
    demo_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo_module)
    cfg = load_config(args.config_file, ["MODEL.WEIGHTS", args.weights, *args.opts])
    demo = demo_module.VisualizationDemo(cfg)
    source, output = os.path.join(work, "input.mp4"), os.path.join(work, "output.mp4")
    write_video(source, args.frames)
    video = cv2.VideoCapture(source)
    writer = cv2.VideoWriter(output, cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (256, 256))
    points, samples = [0], [sample()]
    start = time.perf_counter()
    done = 0
    for done, frame in enumerate(demo.run_on_video(video), start=1):
        writer.write(frame)
        if done % args.every == 0:
            points.append(done)
            samples.append(sample())
            print(f"frame {done}: {samples[-1]}", flush=True)
    video.release()
    writer.release()
    out = _summary(points, samples, "frames")
    out.update(
        frames=done,
        seconds=round(time.perf_counter() - start, 1),
        weights=args.weights or "random",
    )
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("train", "video", "both"), default="both")
    parser.add_argument("--config-file", default=CONFIG)
    parser.add_argument("--iters", type=int, default=1000)
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--weights", default="", help="video model weights (default: random)")
    parser.add_argument("--output", default=RESULT)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    kept = keep_freed_memory()  # as train_net.py and the demo do; M2F_KEEP_FREED_MEMORY=0: off
    torch.set_num_threads(args.threads)
    report = {
        "config": os.path.relpath(args.config_file, ROOT),
        "opts": args.opts,
        "threads": args.threads,
        "keep_freed_memory": kept,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "loadavg_start": open("/proc/loadavg").read().split()[:3],
    }
    with tempfile.TemporaryDirectory(prefix="memory_slope_") as work:
        if args.part in ("train", "both"):
            report["train"] = measure_training(args, work)
        if args.part in ("video", "both"):
            report["video"] = measure_video(args, work)
    report["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)
    for part in ("train", "video"):
        if part in report:
            r = report[part]
            print(
                f"{part}: RSS slope {r['main']['slope']['after_warmup']:+.2f} MiB per 100 "
                f"{'iterations' if part == 'train' else 'frames'} after the first sample "
                f"(second half {r['main']['slope']['second_half']:+.2f}, all "
                f"{r['main']['slope']['all']:+.2f}); with children "
                f"{r['with_children']['slope']['after_warmup']:+.2f}; main process "
                f"{r['main']['first_mib']:.0f} -> {r['main']['last_mib']:.0f} MiB, "
                f"peak {r['main']['peak_mib']:.0f} MiB"
            )
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
