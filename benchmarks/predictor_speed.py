#!/usr/bin/env python
"""Network time per image of every Predictor backend on the CPU (eager, ``torch.compile``,
onnxruntime, OpenVINO), post-processing timed apart, with random weights.

Each backend runs the network exactly as the ``Predictor`` does
(:func:`mask2former.backends.make_network`) on one normalised random image of ``--height`` x
``--width`` (batch 1). Its first call (``torch.compile``'s compilation, the ONNX export and
the runtime's load) is timed alone, and its outputs are compared with eager. Then the backends
take turns, ``--warmup`` untimed rounds and ``--runs`` timed ones, so that other work on the
machine slows them alike; the median is reported. The post-processing (semantic + panoptic +
instance inference, the same for every backend) is timed on its own: end to end = network +
post-processing. ``--backends eager_bfloat16`` adds eager under bfloat16 autocast.

    python benchmarks/predictor_speed.py  # the synthetic R18 at 256 x 256, 2 threads
    python benchmarks/predictor_speed.py --runs 3 --height 800 --width 1216 \
        --config-file configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml

Figures go to ``benchmarks/results/predictor_speed_<config name>.json``; the order they give
(fastest first) is what ``mask2former.backends.AUTO_ORDER`` should be.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import platform
import statistics
import sys
import time

import torch
from detectron2.modeling import build_model

import mask2former  # noqa: F401  (registers the model components)
from mask2former.backends import AUTO_ORDER, BACKENDS, make_network, missing_packages
from mask2former.engine.defaults import load_config
from mask2former.layers import active_impl_of
from mask2former.modeling.inference import InferenceNetwork, normalize_and_pad
from mask2former.utils.allocator import keep_freed_memory

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from inference_speed import _cpu_name  # noqa: E402

logger = logging.getLogger("mask2former.benchmarks.predictor_speed")

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEFAULT_CONFIG = os.path.join(
    _ROOT, "configs/synthetic/panoptic-segmentation/maskformer2_R18_synthetic.yaml"
)
CHOICES = (*BACKENDS, "eager_bfloat16")
PACKAGES = ("torch", "onnx", "onnxscript", "onnxruntime", "openvino")


def _runner(backend: str, network: InferenceNetwork):
    """images (1, 3, H, W) -> (pred_logits, pred_masks), as the Predictor runs ``backend``."""
    if backend != "eager_bfloat16":
        return make_network(backend, network)

    def bfloat16(images):
        with torch.autocast(device_type=images.device.type, dtype=torch.bfloat16):
            return network(images)

    return bfloat16


def _seconds(fn, *args) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def time_backends(
    model: torch.nn.Module, images: torch.Tensor, backends, warmup: int, runs: int
) -> dict:
    """{backend: {"median", "min", "max", "all", "first_call_seconds", "max_abs_diff"}} for the
    network, the backends taking turns; plus "postprocess" (median seconds and all)."""
    network = InferenceNetwork(model).eval()
    size = tuple(images.shape[-2:])
    results, runners = {}, {}
    with torch.inference_mode():
        reference = network(images)  # eager: (1, Q, K+1), (1, Q, H/4, W/4)
        for backend in backends:
            runners[backend] = _runner(backend, network)
            first, outputs = _seconds(runners[backend], images)
            diffs = [float((o.float() - r).abs().max()) for o, r in zip(outputs, reference)]
            results[backend] = {"first_call_seconds": first, "max_abs_diff": diffs}
            logger.info("  %-15s first call %.1fs, largest difference to eager %.1e",
                        backend, first, max(diffs))  # fmt: skip
        times = {backend: [] for backend in backends}
        loads = []
        for round_ in range(warmup + runs):
            for backend in backends:
                seconds, _ = _seconds(runners[backend], images)
                if round_ >= warmup:
                    times[backend].append(seconds)
            loads.append(os.getloadavg()[0])
        for backend, values in times.items():
            results[backend].update(median=statistics.median(values), min=min(values),
                                    max=max(values), all=values)  # fmt: skip
        post = []
        for round_ in range(warmup + runs):
            seconds, _ = _seconds(
                lambda: model.postprocessor(
                    *reference, padded_size=size, image_sizes=[size], output_sizes=[size]
                )
            )
            if round_ >= warmup:
                post.append(seconds)
    results["postprocess"] = {"median": statistics.median(post), "all": post}
    results["load_average_per_round"] = loads
    return results


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default=_DEFAULT_CONFIG)
    parser.add_argument("--height", type=int, default=256, help="multiple of 32")
    parser.add_argument("--width", type=int, default=256, help="multiple of 32")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--runs", type=int, default=5, help="timed rounds (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads, all backends")
    parser.add_argument("--backends", nargs="+", choices=CHOICES, default=list(BACKENDS))
    parser.add_argument("--output", default="", help="JSON file (default: benchmarks/results/)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)
    kept = keep_freed_memory()  # M2F_KEEP_FREED_MEMORY=0 for malloc's defaults

    torch.set_num_threads(args.threads)
    backends = []
    for backend in args.backends:
        missing = missing_packages(backend) if backend in BACKENDS else []
        if missing:
            logger.warning("skipping %s: pip package(s) %s not installed", backend, missing)
        else:
            backends.append(backend)
    cfg = load_config(args.config_file, args.opts)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, args.height, args.width), generator=generator).float()
    images = normalize_and_pad([image], model.pixel_mean, model.pixel_std).tensor  # (1, 3, H, W)

    name = os.path.splitext(os.path.basename(args.config_file))[0]
    logger.info("%s, %dx%d, %d threads, %s", name, args.height, args.width, args.threads,
                _cpu_name())  # fmt: skip
    load_before = os.getloadavg()[0]
    timings = time_backends(model, images, backends, args.warmup, args.runs)
    load_after = os.getloadavg()[0]

    post = timings["postprocess"]["median"]
    network = {b: timings[b]["median"] for b in backends}
    result = {
        "config": os.path.relpath(os.path.abspath(args.config_file), _ROOT),
        "overrides": args.opts,
        "image_size": [args.height, args.width],
        "batch_size": 1,
        "weights": "random",
        "warmup_rounds": args.warmup,
        "timed_rounds": args.runs,
        # Median seconds of the network alone, fastest first, and relative to eager.
        "network_seconds": dict(sorted(network.items(), key=lambda item: item[1])),
        "network_vs_eager": (
            {b: network[b] / network["eager"] for b in backends} if "eager" in network else {}
        ),
        "postprocess_seconds": post,
        "end_to_end_seconds": {b: network[b] + post for b in backends},
        # Compilation / export + load, paid once per input shape.
        "first_call_seconds": {b: timings[b]["first_call_seconds"] for b in backends},
        # Largest |backend - eager| of (pred_logits, pred_masks).
        "max_abs_diff_to_eager": {b: timings[b]["max_abs_diff"] for b in backends},
        "auto_order_in_code": list(AUTO_ORDER),
        "timings": {b: timings[b] for b in (*backends, "postprocess")},
        "device": _cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "keep_freed_memory": kept,
        # Eager/compile deformable attention of the built model: "compiled" (mask2former._C),
        # "pytorch" or "none". The ONNX backends always run the pure-PyTorch formulation.
        "deformable_attention": active_impl_of(model, "cpu"),
        # 1-minute load average before, after each round, and after: competing work.
        "load_average": [load_before, load_after],
        "load_average_per_round": timings["load_average_per_round"],
        "packages": {p: _version(p) for p in PACKAGES},
        "python": platform.python_version(),
    }
    output = args.output or os.path.join(
        _ROOT, "benchmarks", "results", f"predictor_speed_{name}.json"
    )
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        json.dump(result, f, indent=2)
    logger.info("load average %.1f -> %.1f; network median per image, fastest first:",
                load_before, load_after)  # fmt: skip
    for backend, seconds in result["network_seconds"].items():
        logger.info("  %-15s network %.3fs  end-to-end %.3fs", backend, seconds, seconds + post)
    logger.info("  post-processing %.3fs; wrote %s", post, output)
    return result


if __name__ == "__main__":
    main()
