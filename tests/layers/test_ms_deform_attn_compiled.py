"""The compiled multi-scale deformable attention op against the pure-PyTorch path.

The CPU kernel is tested whenever the extension is built; CUDA tests run only with a GPU and an
extension built with CUDA.
"""

import importlib

import pytest
import torch

from mask2former.layers import ms_deform_attn_dispatch as dispatch
from mask2former.layers.ms_deform_attn import (
    ms_deform_attn,
    ms_deform_attn_impl,
    ms_deform_attn_pytorch,
)

# The module (the package re-exports a function of the same name).
msda = importlib.import_module("mask2former.layers.ms_deform_attn")

needs_ext = pytest.mark.skipif(
    not dispatch.CPU_BUILT, reason="compiled op not built (setup.py could not compile it)"
)
needs_cuda = pytest.mark.skipif(
    not (dispatch.CUDA_BUILT and torch.cuda.is_available()),
    reason="needs a GPU and the op built with CUDA",
)

# Mask2Former R50 encoder levels of a 256x256 image (1/8, 1/16, 1/32), then odd sizes.
POW2_SHAPES = [(32, 32), (16, 16), (8, 8)]
ODD_SHAPES = [(25, 38), (13, 19), (7, 10)]


def make_inputs(
    shapes,
    batch=2,
    queries=5,
    heads=2,
    channels=3,
    points=2,
    dtype=torch.float64,
    device="cpu",
    special_locations=False,
    seed=0,
):
    """Random inputs: value (N, S, M, D), locations (N, Lq, M, L, P, 2), weights (N, Lq, M, L, P).

    Locations are uniform in [-0.2, 1.2] (some outside the image); with ``special_locations``,
    a third of them are moved onto borders (0, 1), pixel centres, and the edges of the
    bilinear support (pixel coordinate exactly -1 or W); use it with power-of-two sizes.
    """
    gen = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64)
    areas = spatial_shapes[:, 0] * spatial_shapes[:, 1]
    level_start_index = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    levels = len(shapes)
    value = torch.randn(batch, int(areas.sum()), heads, channels, generator=gen, dtype=dtype)
    # (N, Lq, M, L, P, 2)
    loc = torch.rand(batch, queries, heads, levels, points, 2, generator=gen, dtype=dtype)
    loc = loc * 1.4 - 0.2
    if special_locations:
        # (L, 2) as (W, H), the size along x and y; exact in binary for power-of-two sizes, so
        # that both paths see the same pixel coordinates (the gradient jumps at these points).
        size = spatial_shapes.flip(-1).to(dtype)[:, None, :]  # (L, 1, 2) against (.., L, P, 2)
        pixel = torch.randint(0, 8, loc.shape, generator=gen).to(dtype)  # a pixel index
        candidates = [
            torch.zeros_like(loc),  # border 0
            torch.ones_like(loc),  # border 1
            (pixel + 0.5) / size,  # pixel centre: integer pixel coordinate
            torch.broadcast_to(-0.5 / size, loc.shape),  # pixel coordinate -1
            torch.broadcast_to((size + 0.5) / size, loc.shape),  # pixel coordinate W (or H)
        ]
        choice = torch.randint(0, 3 * len(candidates), loc.shape, generator=gen)
        for k, candidate in enumerate(candidates):
            loc = torch.where(choice == k, candidate, loc)
    weights = torch.rand(batch, queries, heads, levels * points, generator=gen, dtype=dtype)
    weights = weights.softmax(-1).view(batch, queries, heads, levels, points)
    return [t.to(device) for t in (value, spatial_shapes, level_start_index, loc, weights)]


def forward_and_grads(fn, inputs, grad_dtype=None):
    """Output and gradients of value, locations, weights for a fixed random output gradient
    (rounded to ``grad_dtype`` when given)."""
    value, shapes, starts, loc, weights = [t.detach().clone() for t in inputs]
    for t in (value, loc, weights):
        t.requires_grad_(True)
    out = fn(value, shapes, starts, loc, weights)
    gen = torch.Generator().manual_seed(1)
    grad = torch.randn(out.shape, generator=gen).to(grad_dtype or out.dtype).to(out)
    out.backward(grad)
    return out.detach(), value.grad, loc.grad, weights.grad


@needs_ext
@pytest.mark.parametrize("shapes", [[(3, 4), (2, 3)], [(4, 5)]])
def test_gradcheck_cpu(shapes):
    inputs = make_inputs(shapes, special_locations=False)
    value, spatial_shapes, starts, loc, weights = inputs
    for t in (value, loc, weights):
        t.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda v, lo, w: dispatch.ms_deform_attn_compiled(v, spatial_shapes, starts, lo, w),
        (value, loc, weights),
    )


@needs_ext
@pytest.mark.parametrize(
    "shapes,batch,queries,special",
    [
        (POW2_SHAPES, 1, 150, False),
        (POW2_SHAPES, 4, 60, False),
        (POW2_SHAPES, 1, 150, True),
        (POW2_SHAPES, 4, 60, True),
        (ODD_SHAPES, 2, 100, False),
        ([(16, 16)], 2, 100, True),
    ],
    ids=["batch1", "batch4", "batch1-borders", "batch4-borders", "odd-sizes", "single-level"],
)
def test_matches_pytorch_float32(shapes, batch, queries, special):
    inputs = make_inputs(
        shapes,
        batch=batch,
        queries=queries,
        heads=8,
        channels=32,  # 256 channels
        points=4,
        dtype=torch.float32,
        special_locations=special,
    )
    expected = forward_and_grads(ms_deform_attn_pytorch, inputs)
    actual = forward_and_grads(dispatch.ms_deform_attn_compiled, inputs)
    for name, a, e in zip(("output", "value", "locations", "weights"), actual, expected):
        # Location gradients are scaled by the level size (up to 38 here).
        scale = 40.0 if name == "locations" else 1.0
        torch.testing.assert_close(a, e, rtol=1e-5, atol=2e-5 * scale, msg=name)


@needs_ext
@pytest.mark.parametrize("channels", [8, 48, 64], ids=["D8", "D48", "D64"])
def test_matches_pytorch_float32_other_head_widths(channels):
    """Heads of other widths than 32 take the kernels' general path (D read at run time)."""
    inputs = make_inputs(
        ODD_SHAPES, batch=2, queries=50, heads=4, channels=channels, points=3,
        dtype=torch.float32,
    )
    expected = forward_and_grads(ms_deform_attn_pytorch, inputs)
    actual = forward_and_grads(dispatch.ms_deform_attn_compiled, inputs)
    for name, a, e in zip(("output", "value", "locations", "weights"), actual, expected):
        scale = 40.0 if name == "locations" else 1.0
        torch.testing.assert_close(a, e, rtol=1e-5, atol=2e-5 * scale, msg=name)


@needs_ext
def test_backward_independent_of_threads():
    inputs = make_inputs(POW2_SHAPES, batch=2, queries=40, heads=4, channels=8, points=4)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = forward_and_grads(dispatch.ms_deform_attn_compiled, inputs)
        torch.set_num_threads(max(2, threads))
        multi = forward_and_grads(dispatch.ms_deform_attn_compiled, inputs)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(single, multi):
        assert torch.equal(a, b)


@needs_ext
def test_no_queries():
    inputs = make_inputs(POW2_SHAPES, queries=0)
    out, grad_value, grad_loc, grad_weights = forward_and_grads(
        dispatch.ms_deform_attn_compiled, inputs
    )
    assert out.shape == (2, 0, 2 * 3)
    assert grad_value.abs().sum() == 0 and grad_loc.numel() == 0 and grad_weights.numel() == 0


@needs_ext
def test_rejects_inconsistent_levels():
    value, shapes, starts, loc, weights = make_inputs([(3, 4), (2, 3)])
    with pytest.raises(RuntimeError, match="does not fit"):
        dispatch.ms_deform_attn_compiled(value, shapes * 2, starts, loc, weights)


@needs_ext
def test_opcheck():
    """Schema, fake (meta) function and autograd registration, as torch.compile uses them."""
    inputs = make_inputs([(3, 4), (2, 3)], dtype=torch.float32)
    for i in (0, 3, 4):
        inputs[i].requires_grad_(True)
    torch.library.opcheck(torch.ops.mask2former.ms_deform_attn.default, inputs)


@needs_ext
def test_torch_compile_fullgraph():
    inputs = make_inputs(POW2_SHAPES, queries=20, heads=4, channels=8, dtype=torch.float32)
    value, shapes, starts, loc, weights = inputs

    def loss_fn(v, lo, w):
        return (ms_deform_attn(v, shapes, starts, lo.sigmoid(), w) ** 2).sum()

    torch._dynamo.reset()
    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    grads = []
    for fn in (loss_fn, compiled):
        args = [t.detach().clone().requires_grad_(True) for t in (value, loc, weights)]
        loss = fn(*args)
        loss.backward()
        grads.append([loss.detach()] + [a.grad for a in args])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_dispatch_rules(monkeypatch):
    calls = []
    monkeypatch.setattr(
        msda, "ms_deform_attn_compiled", lambda *a: calls.append("compiled") or a[0].new_zeros(0)
    )
    monkeypatch.setattr(
        msda, "ms_deform_attn_pytorch", lambda *a: calls.append("pytorch") or a[0].new_zeros(0)
    )
    inputs = make_inputs([(3, 4)], dtype=torch.float32)

    ms_deform_attn(*inputs)
    assert calls.pop() == ("compiled" if dispatch.CPU_BUILT else "pytorch")
    ms_deform_attn(*inputs, impl="auto")
    assert calls.pop() == ("compiled" if dispatch.CPU_BUILT else "pytorch")
    assert dispatch.active_impl("cpu", "auto") == ("compiled" if dispatch.CPU_BUILT else "pytorch")

    # The environment variable is a user default for new configs, not read per call.
    monkeypatch.setenv(dispatch.ENV_VAR, "pytorch")
    ms_deform_attn(*inputs)
    assert calls.pop() == ("compiled" if dispatch.CPU_BUILT else "pytorch")
    monkeypatch.delenv(dispatch.ENV_VAR)

    ms_deform_attn(*inputs, impl="pytorch")
    assert calls.pop() == "pytorch"
    assert dispatch.active_impl("cpu", "pytorch") == "pytorch"
    assert dispatch.active_impl("cuda", "pytorch") == "pytorch"

    # No CPU kernel for half; mixed dtypes never reach the compiled op.
    half = [t.half() if t.is_floating_point() else t for t in inputs]
    ms_deform_attn(*half)
    assert calls.pop() == "pytorch"
    mixed = inputs[:3] + [inputs[3].double(), inputs[4]]
    ms_deform_attn(*mixed)
    assert calls.pop() == "pytorch"

    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    ms_deform_attn(*inputs)
    assert calls.pop() == "pytorch"

    with pytest.raises(ValueError, match="auto"):
        ms_deform_attn(*inputs, impl="cuda")
    with pytest.raises(ValueError, match="pytorch"):
        dispatch.active_impl("cpu", "compiled")
    assert not calls


@needs_ext
def test_pixel_decoder_same_with_either_path():
    pixel_decoder = pytest.importorskip("mask2former.models.mask2former.pixel_decoder.msdeformattn")
    from detectron2.layers import ShapeSpec

    torch.manual_seed(0)
    input_shape = {f"res{i}": ShapeSpec(channels=16 * 2**i, stride=2**i) for i in range(2, 6)}
    decoder = pixel_decoder.MSDeformAttnPixelDecoder(
        input_shape,
        transformer_dropout=0.0,
        transformer_nheads=8,
        transformer_n_points=4,
        transformer_dim_feedforward=64,
        transformer_enc_layers=2,
        conv_dim=64,
        mask_dim=64,
        norm="GN",
        transformer_in_features=["res3", "res4", "res5"],
        common_stride=4,
    ).eval()
    features = {
        name: torch.randn(2, shape.channels, 128 // shape.stride, 96 // shape.stride)
        for name, shape in input_shape.items()
    }
    results = {}
    for impl in ("pytorch", "auto"):
        with ms_deform_attn_impl(decoder, impl), torch.no_grad():
            results[impl] = decoder.forward_features(features)
    flat = [torch.utils._pytree.tree_leaves(results[impl]) for impl in ("pytorch", "auto")]
    assert len(flat[0]) == len(flat[1]) > 0
    for a, b in zip(*flat):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@needs_cuda
def test_gradcheck_cuda():
    inputs = make_inputs([(3, 4), (2, 3)], device="cuda")
    value, spatial_shapes, starts, loc, weights = inputs
    for t in (value, loc, weights):
        t.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda v, lo, w: dispatch.ms_deform_attn_compiled(v, spatial_shapes, starts, lo, w),
        (value, loc, weights),
    )


@needs_cuda
@pytest.mark.parametrize(
    "dtype,tol",
    [(torch.float32, 2e-5), (torch.float16, 1e-2), (torch.bfloat16, 5e-2)],
    ids=["float32", "float16", "bfloat16"],
)
@pytest.mark.parametrize("channels", [32, 48, 8], ids=["D32", "D48", "D8"])
@pytest.mark.parametrize(
    "shapes,special", [(POW2_SHAPES, True), (ODD_SHAPES, False)], ids=["borders", "odd-sizes"]
)
def test_cuda_matches_pytorch(dtype, tol, channels, shapes, special):
    inputs = make_inputs(
        shapes,
        batch=2,
        queries=300,
        heads=8,
        channels=channels,
        points=4,
        dtype=torch.float32,
        special_locations=special,
        device="cuda",
    )
    # Both paths see the same (rounded) inputs; the reference computes in float32.
    low = [t.to(dtype) if t.is_floating_point() else t for t in inputs]
    expected = forward_and_grads(
        ms_deform_attn_pytorch, [t.float() if t.is_floating_point() else t for t in low], dtype
    )
    actual = forward_and_grads(dispatch.ms_deform_attn_compiled, low, dtype)
    for name, a, e in zip(("output", "value", "locations", "weights"), actual, expected):
        assert a.dtype == dtype
        scale = 40.0 if name == "locations" else 1.0
        torch.testing.assert_close(a.float(), e, rtol=tol, atol=tol * scale, msg=name)


def test_missing_extension_warns(monkeypatch, caplog):
    def fail(name):
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(dispatch.importlib, "import_module", fail)
    with caplog.at_level("WARNING", logger=dispatch.__name__):
        assert dispatch._load_extension() is None
    assert len(caplog.records) == 1 and "pure-PyTorch" in caplog.text
