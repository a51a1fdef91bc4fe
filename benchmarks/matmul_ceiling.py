#!/usr/bin/env python
"""The machine's practical arithmetic ceiling: float32 multiply-adds per second of one large
matrix product (``torch.mm``, square, oneDNN/MKL), the best rate any layer of a network can reach.

The speed benchmarks report a network's rate as fvcore's multiply-add count over its time; this
script gives the figure to hold them against. Prints the rates and writes
``benchmarks/results/matmul_ceiling.json``.

Usage::

    python benchmarks/matmul_ceiling.py [--threads 1 2] [--sizes 2048 4096] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from inference_speed import _cpu_name  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT = os.path.join(ROOT, "benchmarks", "results", "matmul_ceiling.json")


def matmul_rate(n: int, runs: int) -> dict:
    """Multiply-adds per second (G) of an (n, n) @ (n, n) float32 product: best and median."""
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    out = torch.empty(n, n)
    for _ in range(2):  # warm-up: thread pool, pages of ``out``
        torch.mm(a, b, out=out)
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        seconds.append(time.perf_counter() - start)
    macs = n**3
    return {
        "size": n,
        "gmac_per_s_best": round(macs / min(seconds) / 1e9, 1),
        "gmac_per_s_median": round(macs / statistics.median(seconds) / 1e9, 1),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--output", default=RESULT)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for n in args.sizes:
            row = {"threads": threads, **matmul_rate(n, args.runs)}
            rows.append(row)
            print(
                f"{threads} thread(s), {n}x{n}: {row['gmac_per_s_best']:.1f} G multiply-adds/s "
                f"best, {row['gmac_per_s_median']:.1f} median of {args.runs}"
            )
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": _cpu_name(),
        "torch": torch.__version__,
        # 1-minute load average before and after: other work competing for the CPU.
        "load_average": [load_before, os.getloadavg()[0]],
        "rows": rows,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)
    print(f"written to {args.output}")
    return report


if __name__ == "__main__":
    main()
