#!/usr/bin/env python
"""Inference time per image of a Mask2Former network on the CPU: eager float32, eager under
bfloat16 autocast, ``torch.compile`` and onnxruntime, with random weights.

Each backend runs the same network
(:class:`mask2former.modeling.inference.InferenceNetwork`: backbone, pixel decoder, transformer
decoder) on one normalised random image of ``--height`` x
``--width`` (batch 1): ``--warmup`` untimed calls, then ``--runs`` timed ones; the median is
reported. The post-processing (semantic + panoptic + instance inference, the same for every
backend) is timed once more on its own, so that end-to-end = network + post-processing.
``torch.compile``'s first call (the compilation) and the ONNX export are timed separately.

    python benchmarks/predictor_speed.py --runs 3  # the synthetic model at 256 x 256
    python benchmarks/predictor_speed.py --runs 3 --height 800 --width 1216 \
        --config-file configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml

Figures go to ``benchmarks/results/predictor_speed_<config name>.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import torch
from detectron2.modeling import build_model

import mask2former  # noqa: F401  (registers the model components)
from mask2former.engine.defaults import load_config
from mask2former.export import export_onnx, load_onnx, run_onnx
from mask2former.layers import active_impl_of
from mask2former.modeling.inference import InferenceNetwork, normalize_and_pad

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from inference_speed import _cpu_name  # noqa: E402

logger = logging.getLogger("mask2former.benchmarks.predictor_speed")

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEFAULT_CONFIG = os.path.join(
    _ROOT, "configs/synthetic/panoptic-segmentation/maskformer2_R18_synthetic.yaml"
)
BACKENDS = ("eager", "eager_bfloat16", "compile", "onnxruntime")


def median_seconds(fn: Callable[[], object], warmup: int, runs: int) -> dict:
    """Median, min, max and all seconds of ``runs`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median": statistics.median(times), "min": min(times), "max": max(times),
            "all": times}  # fmt: skip


def _timed_once(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def benchmark(model, images: torch.Tensor, backends, warmup: int, runs: int, threads: int):
    """{backend: timing dict} for the network, plus "postprocess"."""
    network = InferenceNetwork(model).eval()
    size = tuple(images.shape[-2:])
    results = {}
    with torch.inference_mode():
        logits, masks = network(images)
        results["postprocess"] = median_seconds(
            lambda: model.postprocessor(
                logits, masks, padded_size=size, image_sizes=[size], output_sizes=[size]
            ),
            warmup,
            runs,
        )
        if "eager" in backends:
            results["eager"] = median_seconds(lambda: network(images), warmup, runs)
        if "eager_bfloat16" in backends:
            def bf16():
                with torch.autocast(device_type=images.device.type, dtype=torch.bfloat16):
                    return network(images)

            results["eager_bfloat16"] = median_seconds(bf16, warmup, runs)
        if "compile" in backends:
            compiled = torch.compile(network)
            first = _timed_once(lambda: compiled(images))
            results["compile"] = median_seconds(lambda: compiled(images), warmup, runs)
            results["compile"]["first_call_seconds"] = first
    if "onnxruntime" in backends:
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "model.onnx")
            export = _timed_once(
                lambda: export_onnx(model, path, height=size[0], width=size[1])
            )
            session = load_onnx(path, threads=threads)
            array = images.cpu().numpy()
            results["onnxruntime"] = median_seconds(lambda: run_onnx(session, array), warmup, runs)
            results["onnxruntime"]["export_seconds"] = export
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default=_DEFAULT_CONFIG)
    parser.add_argument("--height", type=int, default=256, help="multiple of 32")
    parser.add_argument("--width", type=int, default=256, help="multiple of 32")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first")
    parser.add_argument("--runs", type=int, default=5, help="timed calls (median reported)")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: torch's)")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--output", default="", help="JSON file (default: benchmarks/results/)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    cfg = load_config(args.config_file, args.opts)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, args.height, args.width), generator=generator).float()
    images = normalize_and_pad([image], model.pixel_mean, model.pixel_std).tensor  # (1, 3, H, W)

    load_before = os.getloadavg()[0]
    timings = benchmark(model, images, args.backends, args.warmup, args.runs, threads)
    load_after = os.getloadavg()[0]

    post = timings["postprocess"]["median"]
    result = {
        "config": os.path.relpath(os.path.abspath(args.config_file), _ROOT),
        "overrides": args.opts,
        "image_size": [args.height, args.width],
        "batch_size": 1,
        "weights": "random",
        "warmup": args.warmup,
        "runs": args.runs,
        # Median seconds of the network alone, and end to end (network + post-processing).
        "network_seconds": {b: timings[b]["median"] for b in args.backends},
        "end_to_end_seconds": {b: timings[b]["median"] + post for b in args.backends},
        "postprocess_seconds": post,
        "timings": timings,
        "device": _cpu_name(),
        "torch_threads": threads,
        # Eager/compile deformable attention of the built model: "compiled" (mask2former._C),
        # "pytorch" (M2F_MSDA_IMPL=pytorch, DEFORMABLE_ATTENTION_IMPL pytorch) or "none".
        # onnxruntime always runs the pure-PyTorch formulation, exported.
        "deformable_attention": active_impl_of(model, "cpu"),
        # 1-minute load average before and after timing: other work competing for the CPU.
        "load_average": [load_before, load_after],
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    name = os.path.splitext(os.path.basename(args.config_file))[0]
    output = args.output or os.path.join(
        _ROOT, "benchmarks", "results", f"predictor_speed_{name}.json"
    )
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        json.dump(result, f, indent=2)
    logger.info(
        "%s, %dx%d, %d threads, %s (load %.1f -> %.1f)",
        name, args.height, args.width, threads, result["device"], load_before, load_after,
    )  # fmt: skip
    for backend in args.backends:
        logger.info(
            "  %-15s network %.3fs  end-to-end %.3fs per image",
            backend, timings[backend]["median"], timings[backend]["median"] + post,
        )  # fmt: skip
    logger.info("  post-processing %.3fs; wrote %s", post, output)
    return result


if __name__ == "__main__":
    main()
