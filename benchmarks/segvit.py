#!/usr/bin/env python
"""GFLOPs and CPU time per image of SegViT ViT-L and ViT-L Shrunk at 640 x 640.

Builds the ADE20K configs with random weights (FLOPs and time do not depend on them) and
measures, on one 640 x 640 image (batch 1, one sliding window: the reference's test crop):

- GFLOPs with fvcore (one multiply-add = one FLOP, the convention of the paper's
  ``tools/get_flops_fvcore.py``) of the network: backbone + head, without the final bilinear
  upsampling and the post-processing (fvcore does not count them). Fused attention
  (``scaled_dot_product_attention``) is counted as its two matrix products, and
  ``nn.MultiheadAttention``'s fused inference op as its projections and products;
- the median CPU time of ``forward_network`` over ``--runs`` calls after one warm-up call.

Prints the figures next to the paper's (637.9 and 373.5 GFLOPs, -41 %) and writes them to
``benchmarks/results/segvit_gflops_640.json``::

    python benchmarks/segvit.py --runs 3
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from typing import Any

import torch
from detectron2.modeling import build_model
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape

import mask2former  # noqa: F401  (registers the model components)
from mask2former.config import load_config
from mask2former.modeling.inference import InferenceNetwork

logger = logging.getLogger("mask2former.benchmarks.segvit")

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIGS = os.path.join(_ROOT, "configs", "ade20k", "semantic-segmentation", "segvit")
MODELS = {
    "ViT-L": ("segvit_vit-l_640_160k.yaml", 637.9),
    "ViT-L Shrunk": ("segvit_vit-l_shrunk_640_160k.yaml", 373.5),
}


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
        by_module = {k: v / 1e9 for k, v in flops.by_module().items()
                     if k in ("model.backbone", "model.sem_seg_head")}
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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=640, help="input height and width")
    parser.add_argument("--runs", type=int, default=3, help="timed calls per model")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--output", default=os.path.join(_ROOT, "benchmarks", "results",
                                                         "segvit_gflops_640.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"size": args.size, "torch_threads": torch.get_num_threads(),
                               "models": {}}
    for name, (config, paper) in MODELS.items():
        logger.info("Measuring %s (%s) ...", name, config)
        result = measure(config, args.size, args.runs)
        result["paper_gflops"] = paper
        results["models"][name] = result
        logger.info("%s: %.1f GFLOPs (paper %.1f), %.2f s per image on the CPU", name,
                    result["gflops"], paper, result["cpu_seconds_per_image_median"])
    plain, shrunk = (results["models"][n]["gflops"] for n in MODELS)
    results["shrunk_reduction_percent"] = round(100 * (1 - shrunk / plain), 1)
    logger.info("Shrunk: %.1f %% fewer GFLOPs (paper 41 %%)", results["shrunk_reduction_percent"])
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(results, f, indent=2)
    logger.info("Wrote %s", args.output)
    return results


if __name__ == "__main__":
    main()
