"""Incoherence and boundary targets, and the position encoding (spec 13.1 and 13.6)."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from mask2former.models.transfiner.targets import (
    binary_boundary,
    incoherence_target,
    sine_position_encoding,
)


def _disc(size: int, radius: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centre = (size - 1) / 2
    return (((yy - centre) ** 2 + (xx - centre) ** 2) <= radius**2).float()  # (size, size)


def test_incoherence_of_empty_and_full_masks_is_zero():
    masks = torch.stack([torch.zeros(56, 56), torch.ones(56, 56)])  # (2, 56, 56)
    target = incoherence_target(masks)
    assert target.shape == (2, 28, 28)
    assert target.sum() == 0


@pytest.mark.parametrize("signed", [True, False])
def test_incoherence_of_a_disc_lies_near_its_boundary(signed):
    disc = _disc(56, 18.3)
    target = incoherence_target(disc[None], signed=signed)[0]  # (28, 28)
    assert set(target.unique().tolist()) <= {0.0, 1.0}
    assert target.sum() > 0
    assert target.mean() < 0.25  # a small fraction of the RoI
    # distance of every 28-grid cell centre (in 56-grid pixels) to the circle
    yy, xx = torch.meshgrid(torch.arange(28), torch.arange(28), indexing="ij")
    centre = 27.5
    dist = ((((yy * 2 + 0.5) - centre) ** 2 + ((xx * 2 + 0.5) - centre) ** 2).sqrt() - 18.3).abs()
    assert dist[target.bool()].max() <= 2 * 2  # within 2 cells (4 pixels of the crop)
    assert target[dist > 6].sum() == 0


def test_signed_residue_keeps_the_inner_side_of_the_contour():
    disc = _disc(56, 18.3)[None]
    signed = incoherence_target(disc, signed=True)[0].bool()
    both = incoherence_target(disc, signed=False)[0].bool()
    assert not (signed & ~both).any() and both.sum() > signed.sum()
    yy, xx = torch.meshgrid(torch.arange(28), torch.arange(28), indexing="ij")
    radius = (((yy * 2 + 0.5) - 27.5) ** 2 + ((xx * 2 + 0.5) - 27.5) ** 2).sqrt()
    assert radius[signed].max() <= 18.3 + 1.0  # inside the disc (up to the cell size)
    assert radius[both].max() > 18.3 + 1.0  # |r| also marks the outer side


def test_incoherence_target_rejects_odd_sizes():
    with pytest.raises(ValueError, match="even"):
        incoherence_target(torch.zeros(1, 27, 27))


@pytest.mark.parametrize("seed", [0, 1])
def test_boundary_matches_dilation_xor_erosion_with_a_cross(seed):
    # the reference: skimage binary_dilation != binary_erosion (cross footprint; the image border
    # does not erode), here with scipy
    rng = np.random.default_rng(seed)
    masks = rng.random((3, 28, 28)) > 0.6
    masks[0] = _disc(28, 9).numpy() > 0
    expected = np.stack(
        [ndimage.binary_dilation(m) != ndimage.binary_erosion(m, border_value=1) for m in masks]
    )
    got = binary_boundary(torch.from_numpy(masks)).numpy()
    np.testing.assert_array_equal(got, expected.astype(np.float32))


def test_position_encoding_values_and_range():
    pos = sine_position_encoding(28, 256)
    assert pos.shape == (1, 256, 28, 28)
    assert pos.min() >= -1 and pos.max() <= 1
    # hand formula: y channels first; channel k of an axis = sin / cos(c / 10000^(2 floor(k/2)/128))
    i, j = 3, 17
    cy, cx = (i + 1) / 28 * 2 * math.pi, (j + 1) / 28 * 2 * math.pi
    for k in (0, 1, 6, 7, 127):
        f = 10000 ** (2 * (k // 2) / 128)
        trig = math.sin if k % 2 == 0 else math.cos
        assert pos[0, k, i, j].item() == pytest.approx(trig(cy / f), abs=1e-5)
        assert pos[0, 128 + k, i, j].item() == pytest.approx(trig(cx / f), abs=1e-5)


def test_same_relative_location_gives_nearly_equal_codes():
    coarse = sine_position_encoding(28, 256)[0]  # (256, 28, 28)
    fine = sine_position_encoding(112, 256)[0]  # (256, 112, 112)
    # cell (i, j) of the 28 grid and cell (4i + 3, 4j + 3) of the 112 grid: same (i+1)/28
    for i, j in [(0, 0), (13, 20), (27, 27)]:
        a, b = coarse[:, i, j], fine[:, 4 * i + 3, 4 * j + 3]
        assert torch.allclose(a, b, atol=1e-4)
    far = fine[:, 100, 5]
    assert (coarse[:, 13, 20] - far).abs().max() > 0.5
