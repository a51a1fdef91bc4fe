#!/usr/bin/env python
"""A training step of this package against the official Mask2Former code on the CPU.

Both models come from one YAML (default the COCO panoptic R50 config), with this package's
random weights (seed 0) copied into the official one (same key names; a missing or unexpected
key is an error), both in train mode. The official code is loaded from ``--official-root`` by
``benchmarks/official_model.py`` (its compiled deformable-attention op stood in for, forward
and backward, by its own pure-PyTorch function, as on any machine without the op).

The input is one random batch (:func:`make_batch`): ``--batch`` images of ``--height`` x
``--width`` (0-255 noise) with a few random boxes and ellipses as instances (random classes),
as Detectron2 dicts (``image``, ``instances`` with ``gt_classes`` and ``gt_masks`` a (G, H, W)
bool tensor, as the official COCO mappers give); both models get the same dicts.

One training step, as Detectron2's ``SimpleTrainer`` runs it: the forward with the losses (both
models return them already weighted), their sum, backward, a ``torch.optim.AdamW`` step (lr
1e-4, weight decay 0.05, one optimizer per model: fused for ours, as this package's trainer
builds it, PyTorch's default for the official code, as its ``train_net.py`` does) and
``zero_grad``. Measured:

- **time**, in one process, interleaved (the two codes alternate within every round, the order
  alternating between rounds; ``--warmup`` untimed rounds, then ``--runs`` timed ones): medians
  of wall and CPU seconds per step and the ratio ours / official, split into forward, backward
  and optimizer, and the forward's CPU seconds split by stage (backbone, pixel decoder,
  transformer decoder, matcher, losses) with forward hooks;
- **peak memory**, each code alone in a child process (this script with ``--only``): the peak
  resident memory (``ru_maxrss``) over its warm-up and timed steps, absolute and above the
  resident memory just before its first step (the model built, the batch made), in MiB;
- **agreement** before any step: both forwards seeded identically, so that the random points of
  the matcher and of the criterion's importance sampling are the same draws; the total losses
  and the gradients (relative norm of the difference) of the two codes. Without the common seed
  the total losses would differ by the point sampling alone (this package's, 2 x 256 x 256, at
  initialisation: 187.18 to 187.23 over seeds 0-3; identically seeded: 4e-8 apart). The
  gradients agree (about 1e-5) except those of the pixel decoder's ``sampling_offsets`` (up to
  25% apart at 256 x 256): at initialisation their weights are 0 and their biases integers, so
  every sampling point sits on the pixel lattice, where bilinear interpolation is not
  differentiable; this package's compiled op (``x * W - 0.5``, as the official CUDA kernel) and
  ``grid_sample`` (``((2x - 1) + 1) * W - 1) / 2``, the official pure-PyTorch path) round a
  point to different sides of the kink and take different one-sided derivatives. Moving the
  points off the lattice (``N(0, 1e-4)`` added to those weights in both models) brings every
  gradient within 3e-7 (128 x 128); hence a second figure without those parameters.

``--profile`` adds a ``torch.profiler`` table of one step of each (top operators by self CPU
time). Figures go to ``benchmarks/results/train_step_compare.json``::

    OMP_NUM_THREADS=2 python benchmarks/train_step_compare.py --profile
    python benchmarks/train_step_compare.py --threads 1 --height 256 --width 256 --runs 1 \\
        --warmup 0 --output /tmp/ts_quick.json                       # a quick check
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
import tempfile
import time
from functools import partial

import torch
from detectron2.modeling import build_model
from detectron2.structures import Instances

import mask2former  # noqa: F401  (registers the model components)
from mask2former.config import load_config
from mask2former.layers import active_impl_of
from mask2former.utils.allocator import keep_freed_memory

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from inference_speed import _cpu_name  # noqa: E402
from mp_former import _peak_rss_mb  # noqa: E402
from official_compare import (
    _DEFAULT_CONFIG,
    _profile_table,
    _wall_and_cpu_seconds,
)  # noqa: E402
from official_model import build_official_model, load_official  # noqa: E402

logger = logging.getLogger("mask2former.benchmarks.train_step_compare")

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODES = ("ours", "official")
LEARNING_RATE = 1e-4
WEIGHT_DECAY = 0.05
# Submodules whose forward calls are timed (same names in both codes): stage -> module path.
STAGE_MODULES = {
    "backbone": "backbone",
    "head": "sem_seg_head",
    "transformer_decoder": "sem_seg_head.predictor",
    "criterion": "criterion",
    "matcher": "criterion.matcher",
}
_PAGE_MIB = os.sysconf("SC_PAGE_SIZE") / 2**20
# Deformable attention's sampling-offset projections: at initialisation (weights 0, integer
# biases) every sampling point lies on the pixel lattice, where bilinear sampling has a kink and
# the two codes' kernels take different one-sided derivatives (see the module docstring).
_LATTICE_PARAMS = (
    "self_attn.sampling_offsets.weight",
    "self_attn.sampling_offsets.bias",
)


def _rss_mib() -> float:
    """Resident memory of this process now, in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE_MIB


def make_batch(
    batch: int,
    height: int,
    width: int,
    num_classes: int,
    generator: torch.Generator,
    min_instances: int = 2,
    max_instances: int = 6,
) -> list[dict]:
    """Random training inputs: per image a (3, height, width) float image in [0, 255] and
    ``instances`` with ``gt_classes`` (G,) int64 in [0, num_classes) and ``gt_masks`` (G, height,
    width) bool, each mask a random axis-aligned box or ellipse 1/8 to 1/2 of the image side
    across, centred in the image (so never empty; clipped at the border), G in
    [min_instances, max_instances]."""
    if batch < 1 or height < 16 or width < 16:
        raise ValueError(
            f"make_batch: need batch >= 1 and sides >= 16, got batch {batch}, {height}x{width}"
        )
    if not 1 <= min_instances <= max_instances:
        raise ValueError(
            f"make_batch: need 1 <= min_instances <= max_instances, got {min_instances}, "
            f"{max_instances}"
        )

    def uniform(n: int, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)  # (n,)

    ys = torch.arange(height, dtype=torch.float32)[None, :, None] + 0.5  # (1, H, 1)
    xs = torch.arange(width, dtype=torch.float32)[None, None, :] + 0.5  # (1, 1, W)
    inputs = []
    for _ in range(batch):
        image = torch.randint(0, 256, (3, height, width), generator=generator).float()
        g = int(torch.randint(min_instances, max_instances + 1, (1,), generator=generator))
        # Half-sizes between 1/16 and 1/4 of the side, centres inside the image.
        half_h = uniform(g, height / 16, height / 4)[:, None, None]  # (G, 1, 1)
        half_w = uniform(g, width / 16, width / 4)[:, None, None]  # (G, 1, 1)
        cy = uniform(g, 0, height)[:, None, None]  # (G, 1, 1)
        cx = uniform(g, 0, width)[:, None, None]  # (G, 1, 1)
        dy, dx = (ys - cy) / half_h, (xs - cx) / half_w  # (G, H, 1), (G, 1, W)
        box = (dy.abs() <= 1) & (dx.abs() <= 1)  # (G, H, W)
        ellipse = dy**2 + dx**2 <= 1  # (G, H, W)
        is_box = torch.rand(g, generator=generator)[:, None, None] < 0.5  # (G, 1, 1)
        masks = torch.where(is_box, box, ellipse)  # (G, H, W) bool
        instances = Instances((height, width))
        instances.gt_classes = torch.randint(0, num_classes, (g,), generator=generator)
        instances.gt_masks = masks
        inputs.append({"image": image, "height": height, "width": width, "instances": instances})
    return inputs


def build_models(args, codes=CODES) -> tuple[object, dict[str, torch.nn.Module]]:
    """The config and the models named in ``codes``, in train mode on the CPU. This package's
    model gets random weights (seed 0); the official one gets the same weights (strict).
    """
    cfg = load_config(args.config_file, args.opts)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    torch.manual_seed(0)
    ours = build_model(cfg)
    models = {}
    if "official" in codes:
        official = build_official_model(load_official(args.official_root), cfg)
        official.load_state_dict(ours.state_dict(), strict=True)
        models["official"] = official.train()
    if "ours" in codes:
        models["ours"] = ours.train()
    else:
        del ours
    return cfg, {c: models[c] for c in codes}


class StageClock:
    """CPU seconds spent in the forward calls of :data:`STAGE_MODULES`, summed over calls (the
    matcher runs once per prediction set), through forward hooks; :meth:`take` returns and
    resets them."""

    def __init__(self, model: torch.nn.Module):
        self._seconds = dict.fromkeys(STAGE_MODULES, 0.0)
        self._started: dict[str, float] = {}
        for stage, path in STAGE_MODULES.items():
            module = model.get_submodule(path)
            module.register_forward_pre_hook(partial(self._enter, stage))
            module.register_forward_hook(partial(self._exit, stage))

    def _enter(self, stage, module, args):
        self._started[stage] = time.process_time()

    def _exit(self, stage, module, args, output):
        self._seconds[stage] += time.process_time() - self._started.pop(stage)

    def take(self) -> dict[str, float]:
        """Stages of the last forward: backbone, pixel decoder (head minus transformer
        decoder), transformer decoder, matcher, losses (criterion minus matcher)."""
        s = self._seconds
        stages = {
            "backbone": s["backbone"],
            "pixel_decoder": s["head"] - s["transformer_decoder"],
            "transformer_decoder": s["transformer_decoder"],
            "matcher": s["matcher"],
            "losses": s["criterion"] - s["matcher"],
        }
        self._seconds = dict.fromkeys(STAGE_MODULES, 0.0)
        return stages


def make_optimizer(model: torch.nn.Module, fused: bool) -> torch.optim.Optimizer:
    """AdamW as each trainer builds it: fused for ours (``mask2former.engine.optimizer``),
    PyTorch's default (per-tensor) for the official ``train_net.py``."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY, fused=fused)


def train_step(model, optimizer, batch: list[dict]) -> tuple[float, dict[str, tuple]]:
    """One training step; returns the total loss and (wall, CPU) seconds of forward (with the
    losses), backward and optimizer (step and ``zero_grad``)."""
    out = {}

    def forward():
        out["loss"] = sum(model(batch).values())  # () scalar, as SimpleTrainer sums them

    phases = {"forward": _wall_and_cpu_seconds(forward)}
    phases["backward"] = _wall_and_cpu_seconds(out["loss"].backward)

    def update():
        optimizer.step()
        optimizer.zero_grad()

    phases["optimizer"] = _wall_and_cpu_seconds(update)
    return float(out["loss"].detach()), phases


def run_steps(
    models: dict[str, torch.nn.Module],
    batch: list[dict],
    warmup: int,
    runs: int,
    seed: int,
) -> dict[str, dict]:
    """``warmup`` + ``runs`` rounds of one step per model, alternating which goes first; before
    each step the global generator is seeded with ``seed + round`` (same random points for
    both). Returns per model the timed rounds' per-phase (wall, CPU) seconds, forward stages
    and every round's total loss."""
    clocks = {name: StageClock(m) for name, m in models.items()}
    optimizers = {name: make_optimizer(m, name == "ours") for name, m in models.items()}
    records = {name: {"phases": [], "stages": [], "losses": []} for name in models}
    names = list(models)
    for r in range(warmup + runs):
        for name in names if r % 2 == 0 else names[::-1]:
            torch.manual_seed(seed + r)
            loss, phases = train_step(models[name], optimizers[name], batch)
            stages = clocks[name].take()
            records[name]["losses"].append(loss)
            if r >= warmup:
                records[name]["phases"].append(phases)
                records[name]["stages"].append(stages)
        if r >= warmup:
            walls = {n: sum(t[0] for t in records[n]["phases"][-1].values()) for n in names}
            logger.info("round %d: wall seconds %s", r, {n: round(w, 3) for n, w in walls.items()})
        else:
            logger.info("round %d: warm-up", r)
    return records


def summarize(record: dict) -> dict:
    """Medians over the timed steps of the phases' and the whole step's wall and CPU
    seconds, and of the forward stages' CPU seconds."""
    steps = record["phases"]
    if not steps:
        return {}
    out = {}
    for kind, index in (("wall", 0), ("cpu", 1)):
        per_phase = {p: [s[p][index] for s in steps] for p in steps[0]}
        totals = [sum(s[p][index] for p in s) for s in steps]
        out[kind] = {
            "step": statistics.median(totals),
            "all": totals,
            **{p: statistics.median(v) for p, v in per_phase.items()},
        }
    out["forward_stages_cpu"] = {
        k: statistics.median(s[k] for s in record["stages"]) for k in record["stages"][0]
    }
    return out


def agreement(models: dict[str, torch.nn.Module], batch: list[dict], seed: int) -> dict:
    """Losses and gradients of the two codes at the same weights, both forwards seeded with
    ``seed`` (same random points). Gradients are cleared afterwards; weights are unchanged.
    """
    losses = {}
    for name, model in models.items():
        torch.manual_seed(seed)
        loss_dict = model(batch)
        sum(loss_dict.values()).backward()
        losses[name] = {k: float(v.detach()) for k, v in loss_dict.items()}
    ours, official = (dict(models[c].named_parameters()) for c in CODES)
    grad_only_one = sorted(k for k in ours if (ours[k].grad is None) != (official[k].grad is None))
    diff_sq = {"all": 0.0, "lattice_free": 0.0}  # squared norms of the differences
    ref_sq = {"all": 0.0, "lattice_free": 0.0}  # and of the official gradients
    max_abs = 0.0
    for k, p in ours.items():
        if p.grad is None or official[k].grad is None:
            continue
        diff = p.grad - official[k].grad
        parts = ("all",) if k.endswith(_LATTICE_PARAMS) else ("all", "lattice_free")
        for part in parts:
            diff_sq[part] += float(diff.square().sum())
            ref_sq[part] += float(official[k].grad.square().sum())
        max_abs = max(max_abs, float(diff.abs().max()))
    for model in models.values():
        model.zero_grad(set_to_none=True)
    totals = {name: sum(v.values()) for name, v in losses.items()}
    keys_differ = sorted(set(losses["ours"]) ^ set(losses["official"]))
    common = set(losses["ours"]) & set(losses["official"])
    return {
        "seed": seed,
        "total_loss": totals,
        "total_loss_abs_diff": abs(totals["ours"] - totals["official"]),
        "total_loss_rel_diff": abs(totals["ours"] - totals["official"])
        / max(abs(totals["official"]), 1e-12),
        "loss_terms_max_abs_diff": max(
            (abs(losses["ours"][k] - losses["official"][k]) for k in common),
            default=0.0,
        ),
        "loss_terms": len(common),
        "loss_keys_only_in_one": keys_differ,
        "grad_rel_diff": (diff_sq["all"] / max(ref_sq["all"], 1e-30)) ** 0.5,
        "grad_rel_diff_without_sampling_offsets": (
            diff_sq["lattice_free"] / max(ref_sq["lattice_free"], 1e-30)
        )
        ** 0.5,
        "grad_max_abs_diff": max_abs,
        "grad_only_in_one": grad_only_one,
    }


def _batch_for(cfg, args) -> list[dict]:
    """The benchmark's batch for ``args`` (the same for every code and process)."""
    return make_batch(
        args.batch,
        args.height,
        args.width,
        cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        torch.Generator().manual_seed(args.seed),
    )


def worker(args) -> dict:
    """``--only CODE``: that code's steps alone in this process, with its peak memory."""
    cfg, models = build_models(args, (args.only,))
    batch = _batch_for(cfg, args)
    rss_before, peak_before = _rss_mib(), _peak_rss_mb()
    record = run_steps(models, batch, args.warmup, args.runs, args.seed)[args.only]
    peak = _peak_rss_mb()
    return {
        "code": args.only,
        "rss_before_first_step_mib": rss_before,
        "peak_rss_before_first_step_mib": peak_before,
        "peak_rss_mib": peak,
        "peak_rss_increase_mib": peak - rss_before,
        "standalone": summarize(record),
        "losses": record["losses"],
    }


def _worker_argv(args, code: str, output: str) -> list[str]:
    argv = [
        "--only", code,
        "--output", output,
        "--config-file", args.config_file,
        "--official-root", args.official_root,
        "--height", str(args.height),
        "--width", str(args.width),
        "--batch", str(args.batch),
        "--threads", str(args.threads),
        "--warmup", str(args.warmup),
        "--runs", str(args.runs),
        "--seed", str(args.seed),
    ]  # fmt: skip
    return [sys.executable, os.path.abspath(__file__), *argv, *args.opts]


def measure_memory(args) -> dict[str, dict]:
    """Each code's :func:`worker` in a child process, one after the other."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    results = {}
    with tempfile.TemporaryDirectory(prefix="train_step_compare_") as tmp:
        for code in CODES:
            path = os.path.join(tmp, f"{code}.json")
            logger.info("peak memory: %s alone in a child process", code)
            done = subprocess.run(_worker_argv(args, code, path), env=env, check=False)
            if done.returncode != 0:
                raise RuntimeError(
                    f"the --only {code} child process failed (exit status {done.returncode}); "
                    "its output is above"
                )
            with open(path) as f:
                results[code] = json.load(f)
    return results


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--official-root",
        default="/tmp/official_m2f",
        help="folder holding the official code's mask2former/ package",
    )
    parser.add_argument("--config-file", default=_DEFAULT_CONFIG)
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--batch", type=int, default=2, help="images per step")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--runs", type=int, default=3, help="timed rounds")
    parser.add_argument("--seed", type=int, default=0, help="batch and point-sampling seed")
    parser.add_argument("--profile", action="store_true", help="add torch.profiler tables")
    parser.add_argument("--profile-rows", type=int, default=20)
    parser.add_argument(
        "--no-memory",
        action="store_true",
        help="skip the child processes (peak memory)",
    )
    parser.add_argument("--only", choices=CODES, help=argparse.SUPPRESS)
    parser.add_argument(
        "--output",
        default=os.path.join(_ROOT, "benchmarks", "results", "train_step_compare.json"),
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        parser.error(f"--runs must be >= 1 and --warmup >= 0, got {args.runs}, {args.warmup}")
    if len(args.opts) % 2:
        parser.error(f"config overrides come as KEY VALUE pairs, got {args.opts}")
    return args


def _log_table(result: dict) -> None:
    timing, memory = result["timing"], result.get("memory", {})
    logger.info(
        "%-9s %8s %8s | %8s %8s %8s | %9s %8s %8s %8s %8s | %9s %9s",
        "code", "wall s", "CPU s", "forward", "backward", "optim",
        "backbone", "pix.dec", "tr.dec", "matcher", "losses", "peak MiB", "+MiB",
    )  # fmt: skip
    for code in CODES:
        t, mem = timing[code], memory.get(code, {})
        st = t["forward_stages_cpu"]
        logger.info(
            "%-9s %8.3f %8.3f | %8.3f %8.3f %8.3f | %9.3f %8.3f %8.3f %8.3f %8.3f | %9.0f %9.0f",
            code,
            t["wall"]["step"],
            t["cpu"]["step"],
            t["wall"]["forward"],
            t["wall"]["backward"],
            t["wall"]["optimizer"],
            st["backbone"],
            st["pixel_decoder"],
            st["transformer_decoder"],
            st["matcher"],
            st["losses"],
            mem.get("peak_rss_mib", float("nan")),
            mem.get("peak_rss_increase_mib", float("nan")),
        )
    logger.info(
        "ratio ours/official: wall %.2fx, CPU %.2fx (forward %.2fx, backward %.2fx, optimizer "
        "%.2fx wall); load average %.2f -> %.2f, %d thread(s)",
        result["ratio_wall"],
        result["ratio_cpu"],
        *(result["ratio_wall_phases"][p] for p in ("forward", "backward", "optimizer")),
        *result["load_average"],
        result["torch_threads"],
    )
    a = result["agreement"]
    logger.info(
        "step-0 total loss: ours %.6f, official %.6f (relative difference %.2e; seeded "
        "identically, so the same random points); gradients: relative difference %.2e "
        "(%.2e without the sampling offsets, see the docstring)",
        a["total_loss"]["ours"],
        a["total_loss"]["official"],
        a["total_loss_rel_diff"],
        a["grad_rel_diff"],
        a["grad_rel_diff_without_sampling_offsets"],
    )
    for name, table in result["profiles"].items():
        logger.info("profile %s, one step (self CPU):", name)
        for row in table:
            logger.info(
                "  %-50s %7.3f s %5.1f%% %6d calls",
                row["op"][:50],
                row["self_s"],
                100 * row["share"],
                row["calls"],
            )


def main(argv=None) -> dict:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    kept = keep_freed_memory()  # also in the memory workers; M2F_KEEP_FREED_MEMORY=0: off
    torch.set_num_threads(args.threads)
    if args.only:
        result = worker(args)
        with open(args.output, "w") as f:
            json.dump(result, f)
        return result

    load_official(args.official_root)  # a wrong --official-root fails here, before the children
    load_before = os.getloadavg()[0]
    memory = {} if args.no_memory else measure_memory(args)
    cfg, models = build_models(args)
    batch = _batch_for(cfg, args)
    agree = agreement(models, batch, args.seed)
    records = run_steps(models, batch, args.warmup, args.runs, args.seed)
    profiles = {}
    if args.profile:
        optimizers = {name: make_optimizer(m, name == "ours") for name, m in models.items()}
        for name, model in models.items():
            torch.manual_seed(args.seed)
            step = partial(train_step, model, optimizers[name], batch)
            profiles[name] = _profile_table(step, args.profile_rows)
    load_after = os.getloadavg()[0]

    timing = {code: summarize(records[code]) for code in CODES}
    ours, official = timing["ours"], timing["official"]
    result = {
        "config": os.path.relpath(os.path.abspath(args.config_file), _ROOT),
        "overrides": args.opts,
        "official_root": os.path.abspath(args.official_root),
        "batch": args.batch,
        "image_size": [args.height, args.width],
        "instances_per_image": [len(x["instances"]) for x in batch],
        "optimizer": {
            "type": "AdamW",
            "lr": LEARNING_RATE,
            "weight_decay": WEIGHT_DECAY,
        },
        "timing": timing,
        "ratio_wall": ours["wall"]["step"] / official["wall"]["step"],
        "ratio_cpu": ours["cpu"]["step"] / official["cpu"]["step"],
        "ratio_wall_phases": {
            p: ours["wall"][p] / official["wall"][p] for p in ("forward", "backward", "optimizer")
        },
        "memory": memory,
        "agreement": agree,
        "losses_per_round": {code: records[code]["losses"] for code in CODES},
        "profiles": profiles,
        "deformable_attention": active_impl_of(models["ours"], "cpu"),
        "device": _cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "keep_freed_memory": kept,
        "load_average": [load_before, load_after],
        "warmup": args.warmup,
        "runs": args.runs,
        "seed": args.seed,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2)
    _log_table(result)
    logger.info("Wrote %s", args.output)
    return result


if __name__ == "__main__":
    main()
