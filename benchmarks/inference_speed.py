#!/usr/bin/env python
"""Inference time per image of a Mask2Former config, with random weights.

Builds the model of ``--config-file`` (no weights are loaded: timing does not depend on them),
feeds one random image of ``--height`` x ``--width`` per call (batch 1, the evaluation setting,
all post-processing the config switches on included), runs ``--warmup`` untimed calls, then
``--runs`` timed ones, and prints and writes the median, mean, min and max seconds per image to a
JSON file (default ``benchmarks/results/inference_speed_<config>_<device>_<impl>.json``, where
``impl`` is the deformable-attention path of the built model: ``compiled``, or ``pytorch`` with
``M2F_MSDA_IMPL=pytorch`` or ``MODEL.SEM_SEG_HEAD.DEFORMABLE_ATTENTION_IMPL pytorch``).

Example (the figure quoted in the README)::

    python benchmarks/inference_speed.py \
        --config-file configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml
    M2F_MSDA_IMPL=pytorch python benchmarks/inference_speed.py \
        --config-file configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time

import torch
from detectron2.modeling import build_model

import mask2former  # noqa: F401  (registers the model components)
from mask2former.engine.defaults import adjust_for_device, load_config
from mask2former.layers import active_impl_of
from mask2former.utils.allocator import keep_freed_memory

logger = logging.getLogger("mask2former.benchmarks.inference_speed")

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEFAULT_CONFIG = os.path.join(
    _ROOT, "configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml"
)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(model, height: int, width: int, warmup: int, runs: int) -> list[float]:
    """Seconds of each of ``runs`` timed inference calls on one random image."""
    device = model.device
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, height, width), generator=generator).float()
    inputs = [{"image": image.to(device), "height": height, "width": width}]
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            _sync(device)
            start = time.perf_counter()
            model(inputs)
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return times


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default=_DEFAULT_CONFIG)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1216)
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first")
    parser.add_argument("--runs", type=int, default=5, help="timed calls")
    parser.add_argument("--device", default="",
                        help="default: the config's MODEL.DEVICE, the CPU when CUDA is absent")
    parser.add_argument("--output", default="", help="JSON file (default: benchmarks/results/)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    kept = keep_freed_memory()  # M2F_KEEP_FREED_MEMORY=0 for malloc's defaults

    cfg = load_config(args.config_file, args.opts)
    cfg.MODEL.DEVICE = args.device or cfg.MODEL.DEVICE
    for note in adjust_for_device(cfg):
        logger.info(note)
    cfg.MODEL.WEIGHTS = ""
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    load_before = os.getloadavg()[0]
    times = measure(model, args.height, args.width, args.warmup, args.runs)
    load_after = os.getloadavg()[0]

    test = cfg.MODEL.MASK_FORMER.TEST
    device = torch.device(cfg.MODEL.DEVICE)
    result = {
        "config": os.path.relpath(os.path.abspath(args.config_file), _ROOT),
        "overrides": args.opts,
        "image_size": [args.height, args.width],
        "batch_size": 1,
        "tasks": [t for t, on in [("semantic", test.SEMANTIC_ON), ("instance", test.INSTANCE_ON),
                                  ("panoptic", test.PANOPTIC_ON)] if on],
        "weights": "random",
        "warmup": args.warmup,
        "runs": args.runs,
        "seconds_per_image": {
            "median": statistics.median(times),
            "mean": statistics.fmean(times),
            "min": min(times),
            "max": max(times),
            "all": times,
        },
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        # What this model's deformable attention runs: "compiled" (mask2former._C), "pytorch"
        # (M2F_MSDA_IMPL=pytorch or DEFORMABLE_ATTENTION_IMPL pytorch, or no extension), "none".
        "deformable_attention": active_impl_of(model, device.type),
        "torch_threads": torch.get_num_threads(),
        "keep_freed_memory": kept,
        # 1-minute load average before and after timing: other work competing for the CPU.
        "load_average": [load_before, load_after],
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    name = os.path.splitext(os.path.basename(args.config_file))[0]
    tag = f"{name}_{device.type}_{result['deformable_attention']}"
    default = os.path.join(_ROOT, "benchmarks", "results", f"inference_speed_{tag}.json")
    output = args.output or default
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        json.dump(result, f, indent=2)
    logger.info(
        "%s, %dx%d, %s (%d threads, %s deformable attention): "
        "median %.3f s/image (mean %.3f, min %.3f, max %.3f; %d runs)",
        result["config"], args.height, args.width, result["device"], result["torch_threads"],
        result["deformable_attention"],
        result["seconds_per_image"]["median"], result["seconds_per_image"]["mean"],
        result["seconds_per_image"]["min"], result["seconds_per_image"]["max"], args.runs,
    )
    logger.info("Wrote %s", output)
    return result


if __name__ == "__main__":
    main()
