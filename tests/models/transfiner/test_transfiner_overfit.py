"""Spec 13.10: a real short training run on thin-part shapes, after which the refined 112 x 112
masks beat the upsampled coarse 28 x 28 masks on boundary quality.

The data is the benchmark's comb images (``benchmarks/transfiner.py overfit --data comb``):
one comb per 256 px image, teeth 8 px wide with 8 px gaps, about one coarse cell each, so the
coarse grid cannot draw them and the quadtree levels can. The synthetic config's model (R18-FPN)
trains its backbone and mask branch for 100 iterations on 4 images with the GT boxes as RoIs
(about 50 s on 2 CPU cores), then both kinds of mask are scored on those images with boundary
IoU (Cheng et al. 2021, band of 2% of the image diagonal).
"""

import importlib.util
import os
import statistics

import pytest
import torch
from detectron2.modeling import build_model

import mask2former  # noqa: F401  (registers the components)
from mask2former.config import load_config

pytestmark = pytest.mark.slow

_ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "..")
_BENCH = os.path.join(_ROOT, "benchmarks", "transfiner.py")
CONFIG = os.path.join(_ROOT, "configs", "synthetic", "instance-segmentation",
                      "transfiner_R18_synthetic.yaml")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("transfiner_benchmark", _BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def trained(bench):
    torch.manual_seed(0)
    model = build_model(load_config(CONFIG, ["MODEL.DEVICE", "cpu"]))
    images = bench.comb_dataset(4, 256, seed=0)
    history = bench.overfit(model, images, iters=100, lr=5e-4)
    return model, images, history


def test_comb_teeth_are_finer_than_the_coarse_grid(bench):
    (mask,) = bench.comb_masks(1, 256, seed=3)
    ys, xs = torch.nonzero(mask, as_tuple=True)
    side = int(xs.max() - xs.min() + 1)
    assert int(ys.max() - ys.min() + 1) == side and 0.75 * 256 <= side <= 0.9 * 256
    # along the teeth, a line across them alternates 8 on / 8 off: runs of 8 px
    rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
    box = mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    lines = [box[box.shape[0] // 2], box[:, box.shape[1] // 2]]
    transitions = [int((line[1:] != line[:-1]).sum()) for line in lines]
    teeth_line = lines[max(range(2), key=lambda i: transitions[i])]
    edges = (teeth_line[1:] != teeth_line[:-1]).nonzero().flatten()
    runs = (edges[1:] - edges[:-1]).tolist()
    assert len(runs) >= 10 and set(runs) == {8}
    assert side / 28 >= 8 * 0.75  # a coarse cell is about as wide as a tooth


def test_refine_loss_falls(trained):
    _, _, history = trained
    first = statistics.mean(h["loss_mask_refine"] for h in history[:10])
    last = statistics.mean(h["loss_mask_refine"] for h in history[-10:])
    assert last < 0.6 * first, (first, last)


def test_refined_masks_beat_upsampled_coarse_masks_on_boundary_iou(bench, trained):
    model, images, _ = trained
    refined = bench.mask_quality(model, images)  # the default test thresholds
    coarse = bench.mask_quality(model, images, refine_limit=0)
    best_coarse = bench.coarse_grid_quality(images)  # the GT itself at 28 x 28, upsampled
    assert refined["instances"] == coarse["instances"] == 4
    assert refined["boundary_IoU"] > coarse["boundary_IoU"] + 20, (refined, coarse)
    assert refined["mask_IoU"] > coarse["mask_IoU"], (refined, coarse)
    # and past a perfect coarse head (its 28 x 28 target, upsampled): the quadtree adds detail
    assert refined["boundary_IoU"] > best_coarse["boundary_IoU"], (refined, best_coarse)
