#!/usr/bin/env python
"""FastInst vs Mask2Former: inference time per image and GFLOPs, random weights.

Models (the official COCO instance configs): FastInst R50 D1 at its 576 test size, FastInst
R50 D3 at 640, and Mask2Former R50 at its own test size (800) and at 640. Every model sees the
same random 480 x 640 images (a typical COCO size), resized by its config's test resize
(``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``), batch 1. The network (``forward_network``) and
the post-processing (``postprocessor``, instance inference) are timed separately: ``--warmup``
untimed images, then ``--runs`` timed ones; the median is reported. GFLOPs are fvcore's count of
the network on the first image (multiply-adds, as Detectron2's ``analyze_model.py`` counts).

Example (the figures quoted in the README)::

    python benchmarks/fastinst.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time

import numpy as np
import torch
from detectron2.data import transforms as T
from detectron2.modeling import build_model

import mask2former  # noqa: F401  (registers the model components)
from mask2former.config import load_config
from mask2former.modeling.inference import InferenceNetwork, normalize_and_pad

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from inference_speed import _cpu_name, _sync  # noqa: E402

logger = logging.getLogger("mask2former.benchmarks.fastinst")

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_COCO = os.path.join(_ROOT, "configs", "coco", "instance-segmentation")
# name -> (config, extra options)
MODELS = {
    "FastInst R50 D1 576": ("fastinst_R50_ppm-fpn_x1_576.yaml", []),
    "FastInst R50 D3 640": ("fastinst_R50_ppm-fpn_x3_640.yaml", []),
    "Mask2Former R50 800": ("maskformer2_R50_bs16_50ep.yaml", []),
    "Mask2Former R50 640": (
        "maskformer2_R50_bs16_50ep.yaml",
        ["INPUT.MIN_SIZE_TEST", "640", "INPUT.MAX_SIZE_TEST", "853"],
    ),
}


def _gflops(model: torch.nn.Module, images: torch.Tensor) -> float | None:
    try:
        from fvcore.nn import FlopCountAnalysis
    except ImportError:
        logger.warning("fvcore is not installed: no GFLOPs")
        return None
    analysis = FlopCountAnalysis(InferenceNetwork(model), images)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    return analysis.total() / 1e9


def benchmark(name: str, config: str, opts: list[str], images: list[np.ndarray], args) -> dict:
    """Time one model on ``images`` ((H, W, 3) uint8 RGB); returns its figures."""
    cfg = load_config(os.path.join(_COCO, config),
                      ["MODEL.WEIGHTS", "", "MODEL.DEVICE", args.device] + opts)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    device = model.pixel_mean.device
    network_s, post_s, sizes, flops = [], [], [], None
    with torch.no_grad():
        for i in range(args.warmup + args.runs):
            image = images[i % len(images)]
            resized = resize.get_transform(image).apply_image(image)  # (H', W', 3)
            tensor = torch.as_tensor(resized.transpose(2, 0, 1).astype("float32"))  # (3,H',W')
            batch = normalize_and_pad([tensor], model.pixel_mean, model.pixel_std,
                                      size_divisibility=model.size_divisibility)
            if flops is None and args.flops:
                flops = _gflops(model, batch.tensor)
            _sync(device)
            start = time.perf_counter()
            logits, masks = model.forward_network(batch.tensor)
            _sync(device)
            mid = time.perf_counter()
            model.postprocessor(logits, masks, padded_size=tuple(batch.tensor.shape[-2:]),
                                image_sizes=batch.image_sizes, output_sizes=[image.shape[:2]])
            _sync(device)
            end = time.perf_counter()
            if i >= args.warmup:
                network_s.append(mid - start)
                post_s.append(end - mid)
                sizes.append(tuple(batch.tensor.shape[-2:]))
    result = {
        "config": config, "options": opts, "padded_input_sizes": sorted(set(sizes)),
        "network_s_median": statistics.median(network_s),
        "postprocess_s_median": statistics.median(post_s),
        "total_s_median": statistics.median(n + p for n, p in zip(network_s, post_s)),
        "network_s": network_s, "postprocess_s": post_s, "gflops": flops,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }
    logger.info("%s: network %.3f s, post-processing %.3f s, %.1f GFLOPs, %.1f M params", name,
                result["network_s_median"], result["postprocess_s_median"], flops or float("nan"),
                result["params_m"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CPU)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--no-flops", dest="flops", action="store_false")
    parser.add_argument("--output", default=os.path.join(_ROOT, "benchmarks", "results",
                                                         "fastinst_cpu.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(3)]
    results = {name: benchmark(name, *MODELS[name], images, args) for name in args.models}
    reference = results.get("Mask2Former R50 800")
    if reference is not None:
        for r in results.values():
            r["speedup_vs_mask2former_800"] = reference["total_s_median"] / r["total_s_median"]
    for name, r in results.items():
        logger.info("%-22s network %.3f s  post %.3f s  total %.3f s  %s GFLOPs  x%.2f", name,
                    r["network_s_median"], r["postprocess_s_median"], r["total_s_median"],
                    "-" if r["gflops"] is None else f"{r['gflops']:.1f}",
                    r.get("speedup_vs_mask2former_800", float("nan")))
    report = {
        "cpu": _cpu_name(), "threads": args.threads, "device": args.device,
        "torch": torch.__version__, "warmup": args.warmup, "runs": args.runs,
        "load_average_at_end": os.getloadavg(), "models": results,
    }
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)
    logger.info("wrote %s", args.output)


if __name__ == "__main__":
    main()
