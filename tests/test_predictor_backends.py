"""The Predictor's backends (mask2former.backends): each one against eager on a tiny randomly
initialised synthetic-config model, the "auto" choice, its fallback, and the errors."""

import importlib.util
import logging
import os
import shutil

import cv2
import numpy as np
import pytest
import torch

from mask2former import backends
from mask2former.backends import BackendUnavailableError, ExportFailedError
from mask2former.export import export_onnx
from mask2former.predictor import Predictor

from tiny_model import NO_THRESHOLDS, PANOPTIC_CONFIG, ROOT, TINY

DEMO = os.path.join(ROOT, "demo", "demo.py")

# The test resize keeps the 64x96 images as they are.
OPTS = TINY + NO_THRESHOLDS + ["INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96"]
# One padded size (both images are 64x96, a multiple of 32), batch 2: one export per backend.
HEIGHT, WIDTH = 64, 96
# What "within 1e-3 of eager" is checked on: network outputs, semantic and instance scores.
ATOL = 1e-3


@pytest.fixture(scope="module")
def eager():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread avoids OpenMP contention on 2 cores
    torch.manual_seed(0)
    yield Predictor.from_config_file(PANOPTIC_CONFIG, opts=OPTS, batch_size=2, backend="eager")
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8) for _ in range(2)]


@pytest.fixture(scope="module")
def shared_export(tmp_path_factory):
    """``export_onnx`` that exports each (model, shape) once and copies the file afterwards:
    onnxruntime and OpenVINO load the same graph, and the suite pays one export."""
    folder = tmp_path_factory.mktemp("onnx")
    done = {}

    def export(model, path, *, height, width, batch_size=1):
        key = (id(model), batch_size, height, width)
        if key not in done:
            done[key] = export_onnx(
                model, str(folder / f"{len(done)}.onnx"), height=height, width=width,
                batch_size=batch_size,
            )  # fmt: skip
        shutil.copy(done[key], path)
        return path

    return export


def _skip_unless_installed(backend):
    missing = backends.missing_packages(backend)
    if missing:
        pytest.skip(f"backend {backend} needs the pip package(s) {', '.join(missing)}")


@pytest.mark.parametrize(
    "backend", ["onnxruntime", "openvino", pytest.param("compile", marks=pytest.mark.slow)]
)
def test_backend_matches_eager(eager, images, shared_export, backend, monkeypatch):
    _skip_unless_installed(backend)
    monkeypatch.setattr(backends, "export_onnx", shared_export)
    other = Predictor(
        model=eager.model, resize=eager.resize, input_format="RGB", batch_size=2, backend=backend
    )
    assert other.backend == backend
    tensor = eager.model.preprocess_image([eager._to_input(x) for x in images]).tensor
    assert tensor.shape == (2, 3, HEIGHT, WIDTH)
    with torch.inference_mode():
        expected = eager.network(tensor)  # (2, Q, K+1), (2, Q, H/4, W/4)
        got = other._network(tensor)
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape and g.dtype == torch.float32
        torch.testing.assert_close(g, e, atol=ATOL, rtol=0)

    for a, b in zip(other(images), eager(images), strict=True):  # the same, post-processed
        torch.testing.assert_close(a["sem_seg"], b["sem_seg"], atol=ATOL, rtol=0)
        assert a["panoptic_seg"][1] == b["panoptic_seg"][1] and len(b["panoptic_seg"][1]) > 0
        assert (a["panoptic_seg"][0] == b["panoptic_seg"][0]).float().mean() > 0.999
        torch.testing.assert_close(a["instances"].scores, b["instances"].scores, atol=ATOL, rtol=0)
        assert torch.equal(a["instances"].pred_classes, b["instances"].pred_classes)


def test_exported_graphs_are_cached_per_input_shape(eager, monkeypatch):
    exported = []

    def fake_export(self, shape):
        exported.append(shape)
        return shape

    def fake_run(graph, images):
        batch, _, height, width = graph
        return np.zeros((batch, 3, 9), np.float32), np.zeros((batch, 3, height, width), np.float32)

    monkeypatch.setattr(backends.ExportedNetwork, "_export", fake_export)
    network = backends.ExportedNetwork(eager.network, "onnxruntime", max_graphs=2)
    network.run = fake_run
    for shape in [(1, 3, 32, 64), (1, 3, 32, 64), (2, 3, 32, 64), (1, 3, 32, 64), (1, 3, 64, 64)]:
        logits, masks = network(torch.zeros(shape))
        assert logits.shape == (shape[0], 3, 9) and masks.shape == (shape[0], 3, *shape[2:])
    # Reused while cached; the least recently used, (2, 3, 32, 64), was dropped for the last.
    assert exported == [(1, 3, 32, 64), (2, 3, 32, 64), (1, 3, 64, 64)]
    assert list(network.graphs) == [(1, 3, 32, 64), (1, 3, 64, 64)]


def _without(monkeypatch, *modules):
    """Make ``modules`` look not installed to the backends."""
    importable = backends._importable
    monkeypatch.setattr(backends, "_importable", lambda m: m not in modules and importable(m))


def test_auto_picks_the_fastest_installed_backend_and_says_why(eager, monkeypatch, caplog):
    monkeypatch.setattr(backends, "AUTO_ORDER", ("openvino", "onnxruntime", "compile", "eager"))
    monkeypatch.setattr(backends, "_importable", lambda module: True)
    kwargs = {"model": eager.model, "resize": None, "input_format": "RGB"}
    assert Predictor(**kwargs, backend="auto").backend == "openvino"
    _without(monkeypatch, "openvino")
    with caplog.at_level(logging.INFO, logger="mask2former.predictor"):
        assert Predictor(**kwargs, backend="auto").backend == "onnxruntime"
    assert "Predictor backend: onnxruntime" in caplog.text
    assert "openvino: pip package(s) openvino not installed" in caplog.text
    _without(monkeypatch, "openvino", "onnxscript")  # needed by both exports
    assert Predictor(**kwargs, backend="auto").backend == "compile"
    # A reduced dtype runs under torch.autocast: eager or compile only.
    monkeypatch.setattr(backends, "_importable", lambda module: True)
    assert Predictor(**kwargs, backend="auto", dtype="bfloat16").backend == "compile"
    monkeypatch.setattr(backends, "_has_cxx_compiler", lambda: False)
    assert Predictor(**kwargs, backend="auto", dtype="bfloat16").backend == "eager"


def test_default_backend_is_auto_or_the_environment_variable(eager, monkeypatch):
    kwargs = {"model": eager.model, "resize": None, "input_format": "RGB"}
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    monkeypatch.setattr(backends, "AUTO_ORDER", ("onnxruntime", "eager"))
    monkeypatch.setattr(backends, "_importable", lambda module: True)
    predictor = Predictor(**kwargs)
    assert predictor.requested_backend == "auto" and predictor.backend == "onnxruntime"
    monkeypatch.setenv(backends.ENV_VAR, "eager")
    assert Predictor(**kwargs).backend == "eager"
    monkeypatch.setenv(backends.ENV_VAR, "tensorrt")
    with pytest.raises(ValueError, match="M2F_PREDICTOR_BACKEND.*tensorrt"):
        Predictor(**kwargs)


def test_auto_falls_back_when_the_export_fails(eager, images, monkeypatch, caplog):
    def failing_export(*args, **kwargs):
        raise RuntimeError("no ONNX translation for aten::made_up")

    monkeypatch.setattr(backends, "export_onnx", failing_export)
    monkeypatch.setattr(backends, "AUTO_ORDER", ("openvino", "onnxruntime", "eager"))
    monkeypatch.setattr(backends, "_importable", lambda module: True)
    auto = Predictor(model=eager.model, resize=None, input_format="RGB", backend="auto")
    assert auto.backend == "openvino"
    with caplog.at_level(logging.WARNING, logger="mask2former.predictor"):
        result = auto(images[0])
    # onnxruntime needs the same export: skipped.
    assert auto.backend == "eager" and "made_up" in caplog.text and "falling back" in caplog.text
    assert caplog.text.count("made_up") == 1
    torch.testing.assert_close(result["sem_seg"], eager(images[0])["sem_seg"], atol=0, rtol=0)

    requested = Predictor(model=eager.model, resize=None, input_format="RGB", backend="openvino")
    with pytest.raises(ExportFailedError, match=r"openvino.*\(1, 3, 64, 96\).*made_up"):
        requested(images[0])


def test_clear_errors_for_backends_that_cannot_run(eager, monkeypatch):
    kwargs = {"model": eager.model, "resize": None, "input_format": "RGB"}
    with pytest.raises(ValueError, match="backend must be one of.*'tensorrt'"):
        Predictor(**kwargs, backend="tensorrt")
    _without(monkeypatch, "openvino")
    with pytest.raises(BackendUnavailableError, match="pip package.*openvino.*pip install"):
        Predictor(**kwargs, backend="openvino")
    with pytest.raises(ValueError, match="float32 only"):
        Predictor(**kwargs, backend="onnxruntime", dtype="bfloat16")
    with pytest.raises(ValueError, match="contradicts"):
        Predictor(**kwargs, backend="onnxruntime", compile=True)
    monkeypatch.setattr(backends, "_has_cxx_compiler", lambda: False)
    with pytest.raises(BackendUnavailableError, match="C\\+\\+ compiler"):
        Predictor(**kwargs, backend="compile")


def test_a_model_without_forward_network_runs_eager(monkeypatch):
    class OwnForward(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("pixel_mean", torch.zeros(3, 1, 1))

    monkeypatch.setattr(backends, "_importable", lambda module: True)
    model = OwnForward()
    assert Predictor(model=model, resize=None, input_format="RGB", backend="auto").backend == (
        "eager"
    )
    with pytest.raises(ValueError, match="forward_network.*OwnForward"):
        Predictor(model=model, resize=None, input_format="RGB", backend="openvino")


def test_demo_backend_flag(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("m2f_demo_backends", DEMO)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    image = tmp_path / "image.png"
    cv2.imwrite(str(image), np.zeros((HEIGHT, WIDTH, 3), np.uint8))
    argv = ["--config-file", PANOPTIC_CONFIG, "--input", str(image), "--backend"]
    args = demo.get_parser().parse_args([*argv, "eager", "--opts", *OPTS])
    assert demo._build_demo(args).predictor.backend == "eager"
    _without(monkeypatch, "openvino")
    with pytest.raises(SystemExit, match=r"openvino.*pip install"):
        demo.main([*argv, "openvino", "--opts", *OPTS])
