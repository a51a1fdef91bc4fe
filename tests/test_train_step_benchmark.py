"""The training-step benchmark's parts that need no official code: the random batch, the
medians it reports and the command line of its child processes."""

import importlib.util
import os

import pytest
import torch

_PATH = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "train_step_compare.py")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("train_step_compare_benchmark", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_batch_has_valid_random_instances(bench):
    batch = bench.make_batch(3, 48, 64, 7, torch.Generator().manual_seed(0))
    assert len(batch) == 3
    for x in batch:
        assert x["image"].shape == (3, 48, 64) and x["image"].dtype == torch.float32
        assert 0 <= float(x["image"].min()) and float(x["image"].max()) <= 255
        inst = x["instances"]
        assert inst.image_size == (48, 64)
        g = len(inst)
        assert 2 <= g <= 6
        assert inst.gt_classes.dtype == torch.int64 and inst.gt_classes.shape == (g,)
        assert bool(((inst.gt_classes >= 0) & (inst.gt_classes < 7)).all())
        assert inst.gt_masks.dtype == torch.bool and inst.gt_masks.shape == (g, 48, 64)
        areas = inst.gt_masks.flatten(1).sum(1)  # (G,)
        assert bool((areas > 0).all()), "an instance mask is empty"
        # 1/8 to 1/2 of the side across: never more than a quarter of the image
        assert bool((areas <= 48 * 64 / 4).all())


def test_batch_depends_only_on_the_seed(bench):
    a, b, c = (bench.make_batch(2, 32, 32, 5, torch.Generator().manual_seed(s)) for s in (1, 1, 2))
    for x, y in zip(a, b):
        assert torch.equal(x["image"], y["image"])
        assert torch.equal(x["instances"].gt_masks, y["instances"].gt_masks)
        assert torch.equal(x["instances"].gt_classes, y["instances"].gt_classes)
    assert not torch.equal(a[0]["image"], c[0]["image"])


def test_batch_rejects_bad_sizes(bench):
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="sides >= 16"):
        bench.make_batch(1, 8, 64, 3, gen)
    with pytest.raises(ValueError, match="min_instances"):
        bench.make_batch(1, 32, 32, 3, gen, min_instances=4, max_instances=2)


def test_summary_takes_medians_of_steps_and_phases(bench):
    def step(fw, bw, opt):
        return {
            "forward": (fw, fw + 1),
            "backward": (bw, bw + 1),
            "optimizer": (opt, opt + 1),
        }

    stages = [dict.fromkeys(("backbone", "matcher"), v) for v in (3.0, 1.0, 2.0)]
    record = {"phases": [step(1, 2, 3), step(3, 4, 5), step(2, 3, 4)], "stages": stages}
    summary = bench.summarize(record)
    assert summary["wall"]["step"] == 9.0  # totals 6, 12, 9
    assert summary["wall"]["all"] == [6, 12, 9]
    assert summary["cpu"]["step"] == 12.0  # totals 9, 15, 12
    assert summary["wall"]["backward"] == 3 and summary["cpu"]["optimizer"] == 5
    assert summary["forward_stages_cpu"] == {"backbone": 2.0, "matcher": 2.0}


def test_child_command_line_parses_back(bench):
    args = bench._parse_args(["--height", "96", "--runs", "2", "MODEL.MASK_FORMER.DEC_LAYERS", "4"])
    argv = bench._worker_argv(args, "official", "/tmp/x.json")
    child = bench._parse_args(argv[2:])  # without the interpreter and the script
    assert child.only == "official" and child.output == "/tmp/x.json"
    assert (child.height, child.width, child.runs) == (96, 384, 2)
    assert child.opts == ["MODEL.MASK_FORMER.DEC_LAYERS", "4"]
