#!/usr/bin/env python
"""This package against the official Mask2Former code on the CPU, same weights, same input.

Builds both models from one YAML (default the COCO panoptic R50 config), with random weights
(seed 0) in this package's model, copied into the official one (same key names; a missing or
unexpected key is an error). The official code is loaded from ``--official-root`` by
``benchmarks/official_model.py`` (its compiled deformable-attention op stood in for by its own
pure-PyTorch function, as on any machine without the op).

Measured in one run, interleaved (the two codes alternate within every round, the order
alternating between rounds), on one random 0-255 image of ``--height`` x ``--width``:

- **network**: backbone + pixel decoder + transformer decoder on the normalised, padded image;
- **end to end**: ``model([{"image", "height", "width"}])`` with semantic, panoptic and instance
  inference all on (the config's switches).

Then a per-stage time of each (backbone, pixel decoder, transformer decoder, post-processing)
and the output agreement: network outputs within ``1e-3``, panoptic pixels agreeing at least
``0.999``, instance scores (sorted) and semantic scores within ``1e-3``.

Random class logits are nearly uniform: no query would pass the panoptic 0.8 score threshold
and panoptic inference would do nothing. ``--class-logit-scale`` (default 6.5) multiplies the
class head's weights and bias in both models so that some queries are confident, like a trained
model's; 1 keeps the random head. On the default R50 input, 6.5 puts 18 of the 100 queries over
the threshold (6 puts none, 7 all of them: the random decoder's queries are much alike).

``--profile`` adds a ``torch.profiler`` table of each (top operators by self CPU time).

    OMP_NUM_THREADS=2 python benchmarks/official_compare.py --official-root /path/to/Mask2Former

Figures go to ``benchmarks/results/official_compare.json``. The network is 242.8 GFLOPs at
800 x 1216 (fvcore count, one multiply-add = one flop): GFLOP/s = 242.8 / seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial

import torch
from detectron2.modeling import build_model

import mask2former  # noqa: F401  (registers the model components)
from mask2former.config import load_config
from mask2former.layers import active_impl_of
from mask2former.modeling.inference import eval_network, normalize_and_pad
from mask2former.utils.allocator import keep_freed_memory

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from inference_speed import _cpu_name  # noqa: E402
from official_model import build_official_model, load_official  # noqa: E402

logger = logging.getLogger("mask2former.benchmarks.official_compare")

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEFAULT_CONFIG = os.path.join(
    _ROOT, "configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml"
)
NETWORK_GFLOP_800x1216 = 242.8  # fvcore count of the R50 network at 800 x 1216
TOLERANCE = 1e-3
MIN_PANOPTIC_AGREEMENT = 0.999


def _wall_and_cpu_seconds(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall-clock seconds and CPU seconds of this process (all its threads) of one call. On a
    machine shared with other work the CPU seconds vary much less than the wall clock."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def _network_fn(model, images: torch.Tensor) -> Callable[[], tuple]:
    """The network: backbone, then the head (pixel + transformer decoder). This package's
    model through the network its eval forward runs (``forward_network``, compiled with
    ``TEST.COMPILE True``)."""
    if hasattr(model, "forward_network"):
        return partial(eval_network(model), images)

    def run():
        outputs = model.sem_seg_head(model.backbone(images))
        return outputs["pred_logits"], outputs["pred_masks"]

    return run


def _stage_seconds(model, images: torch.Tensor, inputs: list[dict]) -> dict:
    """One pass split into backbone, pixel decoder, transformer decoder and post-processing
    (end to end minus the three), in CPU seconds of this process. Both codes' heads have
    ``pixel_decoder.forward_features`` and ``predictor(multi_scale_features, mask_features)``
    (this package's ``forward_last``)."""
    head = model.sem_seg_head
    format_images = getattr(model, "format_images", lambda x: x)  # this package's memory format
    predictor = getattr(head.predictor, "forward_last", head.predictor)  # its inference path
    start = time.process_time()
    features = model.backbone(format_images(images))
    t_backbone = time.process_time()
    mask_features, _, multi_scale = head.pixel_decoder.forward_features(features)
    t_pixel = time.process_time()
    predictor(multi_scale, mask_features)
    t_decoder = time.process_time()
    end_to_end = _wall_and_cpu_seconds(lambda: model(inputs))[1]
    network = t_decoder - start
    return {
        "backbone": t_backbone - start,
        "pixel_decoder": t_pixel - t_backbone,
        "transformer_decoder": t_decoder - t_pixel,
        "post_processing": max(end_to_end - network, 0.0),
        "end_to_end": end_to_end,
    }


def _agreement(ours_net, official_net, ours_result: dict, official_result: dict) -> dict:
    """Largest differences between the two codes' outputs, and whether they are within the
    tolerances of the module docstring."""
    net_diff = max(float((a - b).abs().max()) for a, b in zip(ours_net, official_net))
    sem_diff = float((ours_result["sem_seg"] - official_result["sem_seg"]).abs().max())
    pan_ours, info_ours = ours_result["panoptic_seg"]
    pan_off, info_off = official_result["panoptic_seg"]
    pan_agree = float((pan_ours == pan_off).float().mean())
    cats = [
        [(s["id"], s["category_id"], bool(s["isthing"])) for s in info]
        for info in (info_ours, info_off)
    ]
    inst_ours, inst_off = ours_result["instances"], official_result["instances"]
    if len(inst_ours) == len(inst_off):
        inst_diff = (
            float((inst_ours.scores.sort().values - inst_off.scores.sort().values).abs().max())
            if len(inst_ours)
            else 0.0
        )
    else:
        inst_diff = float("inf")
    return {
        "network_max_abs_diff": net_diff,
        "semantic_max_abs_diff": sem_diff,
        "panoptic_pixel_agreement": pan_agree,
        "panoptic_segments": [len(info_ours), len(info_off)],
        "panoptic_segments_equal": cats[0] == cats[1],
        "instance_count": [len(inst_ours), len(inst_off)],
        "instance_score_max_abs_diff": inst_diff,
        "ok": bool(
            net_diff <= TOLERANCE
            and sem_diff <= TOLERANCE
            and pan_agree >= MIN_PANOPTIC_AGREEMENT
            and inst_diff <= TOLERANCE
        ),
    }


def _profile_table(fn: Callable[[], object], rows: int) -> list[dict]:
    """Top ``rows`` operators of one call by self CPU time."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [
        {
            "op": e.key,
            "self_s": e.self_cpu_time_total / 1e6,
            "share": e.self_cpu_time_total / total,
            "calls": e.count,
        }
        for e in events[:rows]
    ]


def _scale_class_head(model, scale: float) -> None:
    predictor = model.sem_seg_head.predictor
    with torch.no_grad():
        predictor.class_embed.weight.mul_(scale)
        predictor.class_embed.bias.mul_(scale)


def build_pair(args):
    """This package's model and the official one, same weights, eval mode."""
    cfg = load_config(args.config_file, args.opts)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    torch.manual_seed(0)
    ours = build_model(cfg).eval()
    if args.class_logit_scale != 1:
        _scale_class_head(ours, args.class_logit_scale)
    code = load_official(args.official_root)
    official = build_official_model(code, cfg)
    official.load_state_dict(ours.state_dict(), strict=True)
    return cfg, ours, official


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--official-root",
        default="/tmp/official_m2f",
        help="folder holding the official code's mask2former/ package",
    )
    parser.add_argument("--config-file", default=_DEFAULT_CONFIG)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1216)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--runs", type=int, default=3, help="timed rounds")
    parser.add_argument("--class-logit-scale", type=float, default=6.5)
    parser.add_argument("--profile", action="store_true", help="add torch.profiler tables")
    parser.add_argument("--profile-rows", type=int, default=15)
    parser.add_argument(
        "--output", default=os.path.join(_ROOT, "benchmarks", "results", "official_compare.json")
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    kept = keep_freed_memory()  # both codes share the process; M2F_KEEP_FREED_MEMORY=0: off
    torch.set_num_threads(args.threads)

    cfg, ours, official = build_pair(args)
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, args.height, args.width), generator=generator).float()
    inputs = [{"image": image, "height": args.height, "width": args.width}]
    images = normalize_and_pad(
        [image], ours.pixel_mean, ours.pixel_std, size_divisibility=ours.size_divisibility
    ).tensor  # (1, 3, H_pad, W_pad)

    models = {"ours": ours, "official": official}
    fns = {}
    for name, model in models.items():
        fns[f"{name}_network"] = _network_fn(model, images)
        fns[f"{name}_end_to_end"] = (lambda m: lambda: m(inputs))(model)
    times = {k: [] for k in fns}
    cpu_times = {k: [] for k in fns}
    load_before = os.getloadavg()[0]
    with torch.inference_mode():
        order = list(fns)
        for r in range(args.warmup + args.runs):
            # network and end to end of both, alternating which code goes first
            names = order if r % 2 == 0 else [order[i ^ 2] for i in range(len(order))]
            for k in names:
                t, cpu = _wall_and_cpu_seconds(fns[k])
                if r >= args.warmup:
                    times[k].append(t)
                    cpu_times[k].append(cpu)
            logger.info("round %d: %s", r, {k: round(v[-1], 3) for k, v in times.items() if v})
        stages = {name: _stage_seconds(m, images, inputs) for name, m in models.items()}
        agreement = _agreement(
            fns["ours_network"](),
            fns["official_network"](),
            ours(inputs)[0],
            official(inputs)[0],
        )
        profiles = {}
        if args.profile:
            for name, m in models.items():
                profiles[name] = _profile_table(partial(m, inputs), args.profile_rows)
    load_after = os.getloadavg()[0]

    median = {k: statistics.median(v) for k, v in times.items()}
    median_cpu = {k: statistics.median(v) for k, v in cpu_times.items()}
    scale = args.height * args.width / (800 * 1216)
    gflop = NETWORK_GFLOP_800x1216 * scale  # the network's cost grows with the pixel count
    result = {
        "config": os.path.relpath(os.path.abspath(args.config_file), _ROOT),
        "overrides": args.opts,
        "official_root": os.path.abspath(args.official_root),
        "image_size": [args.height, args.width],
        "class_logit_scale": args.class_logit_scale,
        "tasks": ["semantic", "panoptic", "instance"],
        "seconds": {k: {"median": median[k], "all": v} for k, v in times.items()},
        "ratio_network": median["ours_network"] / median["official_network"],
        "ratio_end_to_end": median["ours_end_to_end"] / median["official_end_to_end"],
        "cpu_seconds": {k: {"median": median_cpu[k], "all": v} for k, v in cpu_times.items()},
        "cpu_ratio_network": median_cpu["ours_network"] / median_cpu["official_network"],
        "cpu_ratio_end_to_end": (median_cpu["ours_end_to_end"] / median_cpu["official_end_to_end"]),
        "network_gflop": gflop,
        "gflop_per_s": {
            "ours": gflop / median["ours_network"],
            "official": gflop / median["official_network"],
        },
        "stages": stages,
        "agreement": agreement,
        "profiles": profiles,
        "deformable_attention": active_impl_of(ours, "cpu"),
        "device": _cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "keep_freed_memory": kept,
        "load_average": [load_before, load_after],
        "warmup": args.warmup,
        "runs": args.runs,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2)

    for name in models:
        s = stages[name]
        logger.info(
            "%-8s network %.3f s (%.0f GFLOP/s), end to end %.3f s | CPU s: backbone %.3f, "
            "pixel decoder %.3f, transformer decoder %.3f, post-processing %.3f",
            name,
            median[f"{name}_network"],
            result["gflop_per_s"][name],
            median[f"{name}_end_to_end"],
            s["backbone"],
            s["pixel_decoder"],
            s["transformer_decoder"],
            s["post_processing"],
        )
    logger.info(
        "ratio ours/official: network %.2fx, end to end %.2fx (load average %.2f -> %.2f); "
        "in CPU seconds: network %.2fx, end to end %.2fx",
        result["ratio_network"],
        result["ratio_end_to_end"],
        load_before,
        load_after,
        result["cpu_ratio_network"],
        result["cpu_ratio_end_to_end"],
    )
    logger.info("agreement: %s", agreement)
    for name, table in profiles.items():
        logger.info("profile %s (self CPU):", name)
        for row in table:
            logger.info(
                "  %-45s %7.3f s %5.1f%% %6d calls",
                row["op"][:45],
                row["self_s"],
                100 * row["share"],
                row["calls"],
            )
    logger.info("Wrote %s", args.output)
    if not agreement["ok"]:
        logger.error("the outputs disagree beyond the tolerances (see 'agreement')")
    return result


if __name__ == "__main__":
    main()
