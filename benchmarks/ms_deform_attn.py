#!/usr/bin/env python
"""Multi-scale deformable attention: pure PyTorch against the compiled op.

Sizes of the Mask2Former R50 pixel-decoder encoder: batch 2, levels at 1/8, 1/16, 1/32 of a
1024x1024 image, 8 heads, 4 points, 256 channels, one query per pixel of the three levels
(21,504 queries) sampling near its own pixel, as in the model. Times the forward (no autograd)
and forward + backward (gradients of value, locations and weights) of each implementation on
the CPU with ``--threads`` threads, and on the GPU when there is one and the op was built with
CUDA. Prints the median seconds and speed-ups and writes them to
``benchmarks/results/ms_deform_attn_<device>.json``.

Example (the figures quoted in the README)::

    python benchmarks/ms_deform_attn.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import time

import torch

from mask2former.layers import ms_deform_attn_dispatch as dispatch
from mask2former.layers.ms_deform_attn import ms_deform_attn_pytorch

logger = logging.getLogger("mask2former.benchmarks.ms_deform_attn")

_RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def make_inputs(batch, image_size, strides, heads, channels, points, device):
    """value (N, S, M, D), shapes (L, 2), starts (L,), locations (N, S, M, L, P, 2), weights.

    One query per pixel of every level, sampling as the encoder does: around the query's pixel
    centre, each head in its own direction, point k at about k + 1 pixels (the initialisation of
    MSDeformAttn), plus random offsets of one pixel (as after training).
    """
    gen = torch.Generator().manual_seed(0)
    shapes = torch.tensor([(image_size // s, image_size // s) for s in strides])
    areas = shapes[:, 0] * shapes[:, 1]
    starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    total, levels = int(areas.sum()), len(strides)
    value = torch.randn(batch, total, heads, channels // heads, generator=gen)
    # Reference points: pixel centres of each level, normalised. (S, 2) as (x, y)
    refs = []
    for h, w in shapes.tolist():
        ys, xs = torch.meshgrid(
            (torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij"
        )
        refs.append(torch.stack([xs, ys], -1).view(-1, 2))
    ref = torch.cat(refs)
    angles = torch.arange(heads) * (2 * math.pi / heads)
    direction = torch.stack([angles.cos(), angles.sin()], -1)  # (M, 2)
    direction = direction / direction.abs().max(-1, keepdim=True)[0]
    # (M, 1, P, 2) offsets in pixels, then jitter: (N, S, M, L, P, 2)
    offsets = direction[:, None, None, :] * (torch.arange(points) + 1.0)[None, None, :, None]
    offsets = offsets + torch.randn(batch, total, heads, levels, points, 2, generator=gen)
    size = shapes.flip(-1).float()[:, None, :]  # (L, 1, 2) as (W, H)
    loc = ref[None, :, None, None, None, :] + offsets / size  # (N, S, M, L, P, 2)
    weights = torch.rand(batch, total, heads, levels * points, generator=gen).softmax(-1)
    weights = weights.view(batch, total, heads, levels, points)  # (N, S, M, L, P)
    return [t.to(device) for t in (value, shapes, starts, loc, weights)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, inputs, backward: bool, warmup: int, runs: int) -> list[float]:
    """Seconds of each timed call of fn (with a backward pass when ``backward``)."""
    value, shapes, starts, loc, weights = inputs
    if backward:
        value, loc, weights = (t.detach().requires_grad_(True) for t in (value, loc, weights))
    device = value.device
    seconds = []
    for i in range(warmup + runs):
        _sync(device)
        start = time.perf_counter()
        with torch.set_grad_enabled(backward):
            out = fn(value, shapes, starts, loc, weights)  # (N, Lq, M*D)
            if backward:
                out.backward(torch.ones_like(out))
        _sync(device)
        if i >= warmup:
            seconds.append(time.perf_counter() - start)
        if backward:
            value.grad = loc.grad = weights.grad = None
    return seconds


def run(args, device: torch.device) -> dict:
    inputs = make_inputs(
        args.batch, args.image_size, args.strides, args.heads, args.channels, args.points, device
    )
    impls = {"pytorch": ms_deform_attn_pytorch, "compiled": dispatch.ms_deform_attn_compiled}
    result = {"device": str(device), "median_seconds": {}, "all_seconds": {}}
    for mode, backward in (("forward", False), ("forward_backward", True)):
        for name, fn in impls.items():
            seconds = time_call(fn, inputs, backward, args.warmup, args.runs)
            key = f"{name}_{mode}"
            result["all_seconds"][key] = seconds
            result["median_seconds"][key] = statistics.median(seconds)
            logger.info(
                "%-8s %-27s median %.4f s over %d runs",
                device.type,
                key,
                result["median_seconds"][key],
                len(seconds),
            )
        med = result["median_seconds"]
        result[f"speedup_{mode}"] = med[f"pytorch_{mode}"] / med[f"compiled_{mode}"]
        logger.info("%-8s %-27s speed-up x%.2f", device.type, mode, result[f"speedup_{mode}"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--strides", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--points", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-cuda", action="store_true", help="CPU only, even with a GPU")
    parser.add_argument("--output-dir", default=_RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not dispatch.CPU_BUILT:
        raise SystemExit(
            "the compiled op is not built: run `pip install --no-build-isolation -e .`"
        )
    torch.set_num_threads(args.threads)

    devices = [torch.device("cpu")]
    if dispatch.CUDA_BUILT and torch.cuda.is_available() and not args.no_cuda:
        devices.append(torch.device("cuda"))
    os.makedirs(args.output_dir, exist_ok=True)
    for device in devices:
        result = run(args, device)
        result.update(
            settings={k: v for k, v in vars(args).items() if k != "output_dir"},
            torch=torch.__version__,
            cpu=platform.processor() or platform.machine(),
            cpu_count=os.cpu_count(),
            load_average_1min=os.getloadavg()[0],
            gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        )
        path = os.path.join(args.output_dir, f"ms_deform_attn_{device.type}.json")
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
        logger.info("wrote %s", path)


if __name__ == "__main__":
    main()
