"""The pure-PyTorch multi-scale deformable attention against an explicit bilinear loop."""

import math

import torch

from mask2former.layers import ms_deform_attn_pytorch


def naive_ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights):
    """Sum over levels and points of weight * bilinear sample, corner by corner.

    Pixel (row i, column j) of a level of size (H, W) has its centre at ((j + 0.5) / W,
    (i + 0.5) / H) in normalised coordinates (align_corners=False); corners outside the map
    contribute zero.
    """
    n, _, m, d = value.shape
    _, lq, _, num_levels, num_points, _ = locations.shape
    out = torch.zeros(n, lq, m, d, dtype=value.dtype)
    for b in range(n):
        for q in range(lq):
            for h in range(m):
                for lvl in range(num_levels):
                    height, width = (int(s) for s in spatial_shapes[lvl])
                    start = int(level_start_index[lvl])
                    for p in range(num_points):
                        x = float(locations[b, q, h, lvl, p, 0]) * width - 0.5
                        y = float(locations[b, q, h, lvl, p, 1]) * height - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        fx, fy = x - x0, y - y0
                        corners = [
                            (y0, x0, (1 - fy) * (1 - fx)),
                            (y0, x0 + 1, (1 - fy) * fx),
                            (y0 + 1, x0, fy * (1 - fx)),
                            (y0 + 1, x0 + 1, fy * fx),
                        ]
                        for row, col, corner_weight in corners:
                            if 0 <= row < height and 0 <= col < width:
                                sample = value[b, start + row * width + col, h]
                                out[b, q, h] += weights[b, q, h, lvl, p] * corner_weight * sample
    return out.reshape(n, lq, m * d)


def _problem(shapes, n, m, d, lq, p, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shapes, dtype=torch.long)  # (L, 2)
    level_start_index = torch.cat(
        (spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1])
    )
    s = int(spatial_shapes.prod(1).sum())
    num_levels = len(shapes)
    value = torch.randn(n, s, m, d, generator=gen, dtype=dtype)
    locations = torch.rand(n, lq, m, num_levels, p, 2, generator=gen, dtype=dtype)
    weights = torch.rand(n, lq, m, num_levels, p, generator=gen, dtype=dtype)
    weights = weights / weights.sum((-1, -2), keepdim=True)
    return value, spatial_shapes, level_start_index, locations, weights


def test_matches_naive_bilinear_loop_inside_on_borders_and_outside():
    shapes = [(3, 4), (2, 2)]
    value, spatial_shapes, start, locations, weights = _problem(
        shapes, n=2, m=2, d=3, lq=5, p=3, dtype=torch.float64
    )
    # Widen the range to [-0.4, 1.4]: many samples fall (partly) outside the maps.
    locations = locations * 1.8 - 0.4
    # Exact special positions on query 0, head 0, level 0 (W=4, H=3) and level 1 (W=H=2).
    special = torch.tensor(
        [
            [0.0, 0.0],  # image corner: a quarter of the corner pixel
            [1.0, 1.0],  # opposite corner
            [0.5 / 4, 0.5 / 3],  # centre of pixel (0, 0): exactly that pixel
        ],
        dtype=torch.float64,
    )
    locations[0, 0, 0, 0] = special
    locations[0, 1, 0, 1] = torch.tensor(
        [[-0.25, 0.5], [1.25, 0.75], [-0.3, -0.3]], dtype=torch.float64
    )  # half a pixel / beyond outside the border, and fully outside (zero)
    got = ms_deform_attn_pytorch(value, spatial_shapes, start, locations, weights)
    want = naive_ms_deform_attn(value, spatial_shapes, start, locations, weights)
    assert got.shape == (2, 5, 6)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_pixel_centre_samples_that_pixel():
    shapes = [(3, 4)]
    value, spatial_shapes, start, locations, _ = _problem(
        shapes, n=1, m=1, d=2, lq=1, p=1, dtype=torch.float64
    )
    locations[...] = torch.tensor([(2 + 0.5) / 4, (1 + 0.5) / 3], dtype=torch.float64)
    weights = torch.ones(1, 1, 1, 1, 1, dtype=torch.float64)
    got = ms_deform_attn_pytorch(value, spatial_shapes, start, locations, weights)
    torch.testing.assert_close(got[0, 0], value[0, 1 * 4 + 2, 0])


def test_gradcheck_float64():
    value, spatial_shapes, start, locations, weights = _problem(
        [(2, 3), (1, 2)], n=1, m=1, d=2, lq=2, p=2, dtype=torch.float64, seed=1
    )
    value.requires_grad_()
    locations.requires_grad_()
    weights.requires_grad_()

    def fn(v, loc, w):
        return ms_deform_attn_pytorch(v, spatial_shapes, start, loc, w)

    assert torch.autograd.gradcheck(fn, (value, locations, weights), eps=1e-6, atol=1e-5)
