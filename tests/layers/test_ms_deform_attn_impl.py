"""The deformable-attention implementation is a per-module choice, never process-global state."""

import importlib

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from torch import nn

from mask2former import add_maskformer2_config
from mask2former.layers import MSDeformAttn, active_impl_of, ms_deform_attn_impl
from mask2former.layers import ms_deform_attn_dispatch as dispatch
from mask2former.models.mask2former import build_pixel_decoder

# The module (the package re-exports a function of the same name).
msda = importlib.import_module("mask2former.layers.ms_deform_attn")

needs_ext = pytest.mark.skipif(
    not dispatch.CPU_BUILT, reason="compiled op not built (setup.py could not compile it)"
)

SHAPES = [(6, 8), (3, 4)]
INPUT_SHAPE = {f"res{i}": ShapeSpec(channels=8 * i, stride=2**i) for i in range(2, 6)}


@pytest.fixture(autouse=True)
def no_user_default(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)


def attn_inputs(n=2, lq=5, c=16, seed=0):
    """Arguments of MSDeformAttn.forward for two levels of SHAPES."""
    gen = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(SHAPES, dtype=torch.long)  # (L, 2)
    starts = torch.cat((spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1]))
    s = int(spatial_shapes.prod(1).sum())
    query = torch.randn(n, lq, c, generator=gen)  # (N, Lq, C)
    reference_points = torch.rand(n, lq, len(SHAPES), 2, generator=gen)  # (N, Lq, L, 2)
    value = torch.randn(n, s, c, generator=gen)  # (N, S, C)
    return query, reference_points, value, spatial_shapes, starts


def make_attn(impl="auto"):
    torch.manual_seed(0)
    return MSDeformAttn(16, len(SHAPES), 4, 2, impl=impl)


def tiny_cfg(impl=None):
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    h = cfg.MODEL.SEM_SEG_HEAD
    h.PIXEL_DECODER_NAME = "MSDeformAttnPixelDecoder"
    h.IN_FEATURES = list(INPUT_SHAPE)
    h.CONVS_DIM = 32
    h.MASK_DIM = 16
    h.TRANSFORMER_ENC_LAYERS = 2
    h.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = 4
    h.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS = 2
    if impl is not None:
        h.DEFORMABLE_ATTENTION_IMPL = impl
    return cfg


def impls(module):
    return [m.impl for m in module.modules() if isinstance(m, MSDeformAttn)]


def count_compiled_calls(monkeypatch, fail=False):
    """Wraps the compiled op: records each call, or raises when ``fail``."""
    calls = []
    real = msda.ms_deform_attn_compiled

    def wrapped(*args):
        calls.append(1)
        if fail:
            raise RuntimeError("compiled op called")
        return real(*args)

    monkeypatch.setattr(msda, "ms_deform_attn_compiled", wrapped)
    return calls


def test_impl_is_not_in_state_dict():
    default, pure = make_attn(), make_attn("pytorch")
    assert pure.impl == "pytorch" and default.impl == "auto"
    assert list(pure.state_dict()) == list(default.state_dict())
    assert not any("impl" in k for k in pure.state_dict())
    pure.load_state_dict(default.state_dict(), strict=True)
    assert pure.impl == "pytorch"
    assert "impl='pytorch'" in repr(pure)


def test_invalid_impl_raises():
    with pytest.raises(ValueError, match=r"\('auto', 'pytorch'\).*'cuda'"):
        MSDeformAttn(16, 2, 4, 2, impl="cuda")
    attn = make_attn()
    with pytest.raises(ValueError, match="must be one of"):
        attn.impl = "compiled"
    with pytest.raises(ValueError, match="must be one of"):
        with ms_deform_attn_impl(attn, "compiled"):
            pass
    assert attn.impl == "auto"
    with pytest.raises(ValueError, match="must be one of"):
        build_pixel_decoder(tiny_cfg("fast"), INPUT_SHAPE)


@needs_ext
def test_two_modules_use_their_own_impl(monkeypatch):
    pure, auto = make_attn("pytorch"), make_attn("auto")
    inputs = attn_inputs()
    with torch.no_grad():
        expected = auto(*inputs)
        calls = count_compiled_calls(monkeypatch, fail=True)
        # The "pytorch" module never reaches the compiled op; the "auto" one does.
        got = pure(*inputs)
        with pytest.raises(RuntimeError, match="compiled op called"):
            auto(*inputs)
        assert len(calls) == 1
        assert torch.equal(pure(*inputs), got)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@needs_ext
def test_building_a_pytorch_model_leaves_others_alone(monkeypatch):
    attn = make_attn()
    auto_decoder = build_pixel_decoder(tiny_cfg("auto"), INPUT_SHAPE)
    pure_decoder = build_pixel_decoder(tiny_cfg("pytorch"), INPUT_SHAPE)
    assert impls(pure_decoder) == ["pytorch", "pytorch"]
    assert impls(auto_decoder) == ["auto", "auto"] and attn.impl == "auto"
    assert active_impl_of(pure_decoder, "cpu") == "pytorch"
    assert active_impl_of(auto_decoder, "cpu") == "compiled"
    calls = count_compiled_calls(monkeypatch)
    with torch.no_grad():
        attn(*attn_inputs())
    assert len(calls) == 1


def test_context_manager_sets_and_restores():
    model = nn.Sequential(make_attn("pytorch"), nn.Sequential(make_attn("auto")), nn.ReLU())
    with ms_deform_attn_impl(model, "pytorch") as inside:
        assert inside is model and impls(model) == ["pytorch", "pytorch"]
    assert impls(model) == ["pytorch", "auto"]
    with pytest.raises(KeyError):
        with ms_deform_attn_impl(model, "auto"):
            assert impls(model) == ["auto", "auto"]
            raise KeyError("body fails")
    assert impls(model) == ["pytorch", "auto"]
    attn = make_attn()
    with ms_deform_attn_impl(attn, "pytorch"):  # the module itself
        assert attn.impl == "pytorch"
    assert attn.impl == "auto"
    assert active_impl_of(nn.ReLU(), "cpu") == "none"


@pytest.mark.parametrize(
    "value,expected",
    [("pytorch", "pytorch"), (" PyTorch ", "pytorch"), ("auto", "auto"), ("", "auto")],
)
def test_default_follows_env_var(monkeypatch, value, expected):
    monkeypatch.setenv(dispatch.ENV_VAR, value)
    assert dispatch.default_impl() == expected
    cfg = tiny_cfg()
    assert cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_ATTENTION_IMPL == expected
    decoder = build_pixel_decoder(cfg, INPUT_SHAPE)
    assert impls(decoder) == [expected, expected]
    # Read once, as a default: changing it later does not touch built modules.
    monkeypatch.delenv(dispatch.ENV_VAR)
    assert impls(decoder) == [expected, expected]
    assert tiny_cfg().MODEL.SEM_SEG_HEAD.DEFORMABLE_ATTENTION_IMPL == "auto"
