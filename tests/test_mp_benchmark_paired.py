"""The MP-Former benchmark's paired comparison: differences per seed and a Student-t interval."""

import importlib.util
import math
import os

import pytest

_PATH = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "mp_former.py")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("mp_former_benchmark", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(variant, seed, ap):
    return {"variant": variant, "seed": seed, "metrics": {"PQ": 50.0, "AP": ap, "mIoU": 60.0}}


def test_paired_interval_matches_a_hand_computed_one(bench):
    # AP differences 1, 2, 3: mean 2, sample sd 1, t(0.975, 2 dof) = 4.302653 (tables).
    runs = [_run("mask2former", s, 10.0 + s) for s in range(3)]
    runs += [_run("mp_former", s, 10.0 + s + d) for s, d in zip(range(3), (1.0, 2.0, 3.0))]
    runs.append(_run("mp_former", 7, 99.0))  # no baseline for seed 7: not paired
    ap = bench.paired_differences(runs)["mp_former"]["AP"]
    assert ap["seeds"] == [0, 1, 2]
    assert ap["differences"] == pytest.approx([1.0, 2.0, 3.0])
    half = 4.302653 / math.sqrt(3)
    assert ap["ci95"] == pytest.approx([2.0 - half, 2.0 + half], abs=1e-5)
    assert ap["excludes_zero"] is False  # 2 - 2.48 < 0
    pq = bench.paired_differences(runs)["mp_former"]["PQ"]
    assert pq["mean"] == 0.0 and pq["excludes_zero"] is False


def test_a_consistent_gain_excludes_zero_and_one_seed_has_no_interval(bench):
    runs = [_run("mask2former", s, 10.0) for s in range(5)]
    runs += [_run("mp_former", s, 12.0 + 0.1 * s) for s in range(5)]
    assert bench.paired_differences(runs)["mp_former"]["AP"]["excludes_zero"] is True
    one = bench.paired_differences(runs[:1] + runs[5:6])["mp_former"]["AP"]
    assert math.isnan(one["ci95"][0]) and one["excludes_zero"] is False
    assert "over 5 seeds (excludes 0)" in bench.format_paired(bench.paired_differences(runs))
