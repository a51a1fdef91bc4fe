"""mask2former.export and tools/export_model.py: ONNX (onnxruntime, OpenVINO) and torch.export
against eager, on a tiny randomly initialised synthetic-config model at 64x64."""

import importlib.util
import os

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

from mask2former.config import load_config
from mask2former.export import (
    export_onnx,
    export_torch,
    load_onnx,
    load_openvino,
    postprocess,
    prepare_image,
    run_onnx,
    run_openvino,
)
from mask2former.modeling.inference import InferenceNetwork

from tiny_model import NO_THRESHOLDS, PANOPTIC_CONFIG, ROOT, TINY

CONFIG = PANOPTIC_CONFIG
# Random weights, a smaller model; thresholds 0 so that panoptic segments exist.
OPTS = TINY + NO_THRESHOLDS
SIZE = 64
# Exported and eager graphs differ only in float32 rounding and kernel choice (the exported
# deformable attention is the pure-PyTorch path, eager may use the compiled op).
ATOL = 1e-4


@pytest.fixture(scope="module")
def model():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread avoids OpenMP contention on 2 cores
    torch.manual_seed(0)
    yield build_model(load_config(CONFIG, OPTS)).eval()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def example(model):
    image = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    images, image_size = prepare_image(model, image, SIZE, SIZE)
    with torch.no_grad():
        expected = InferenceNetwork(model)(images)
    return images, image_size, expected


def test_prepare_image_fits_and_pads(model):
    image = np.full((48, 80, 3), 255, np.uint8)
    images, (h, w) = prepare_image(model, image, SIZE, SIZE)
    assert images.shape == (1, 3, SIZE, SIZE) and (h, w) == (38, 64)
    assert images[0, :, h:].abs().max() == 0 and images[0, :, :h, :w].min() > 0


def _assert_close_to_eager(got, expected):
    logits, masks = (torch.as_tensor(x) for x in got)
    assert logits.shape == expected[0].shape and masks.shape == expected[1].shape
    assert masks.shape[-2:] == (SIZE // 4, SIZE // 4)
    torch.testing.assert_close(logits, expected[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(masks, expected[1], atol=ATOL, rtol=0)


def test_onnx_matches_eager(model, example, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    images, image_size, expected = example
    path = export_onnx(model, str(tmp_path / "model.onnx"), height=SIZE, width=SIZE)
    graph = onnx.load(path).graph
    # Standard ONNX operators only: no custom deformable-attention op in the graph.
    assert {node.domain for node in graph.node} <= {"", "ai.onnx"}
    got = run_onnx(path, images)
    _assert_close_to_eager(got, expected)
    # The session's threads do not spin after a run (they would hold PyTorch's cores).
    options = load_onnx(path, threads=1).get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    if importlib.util.find_spec("openvino") is not None:  # the same graph in OpenVINO
        _assert_close_to_eager(run_openvino(load_openvino(path, threads=1), images), expected)

    # Post-processing of the onnxruntime outputs gives the eager model's results.
    sizes = {"input_size": (SIZE, SIZE), "image_sizes": [image_size], "output_sizes": [(48, 80)]}
    from_onnx = postprocess(model, *got, **sizes)[0]
    from_eager = postprocess(model, *expected, **sizes)[0]
    assert from_onnx["sem_seg"].shape == (8, 48, 80)
    torch.testing.assert_close(from_onnx["sem_seg"], from_eager["sem_seg"], atol=1e-3, rtol=0)
    assert from_onnx["panoptic_seg"][1] == from_eager["panoptic_seg"][1]


def test_torch_export_matches_eager(model, example, tmp_path):
    images, _, expected = example
    program = export_torch(model, height=SIZE, width=SIZE)
    path = str(tmp_path / "model.pt2")
    torch.export.save(program, path)
    with torch.no_grad():
        got = torch.export.load(path).module()(images)
    _assert_close_to_eager(got, expected)


def test_export_rejects_sizes_the_backbone_cannot_take(model):
    with pytest.raises(ValueError, match="multiple of"):
        export_torch(model, height=SIZE + 8, width=SIZE)


def _load_tool():
    path = os.path.join(ROOT, "tools", "export_model.py")
    spec = importlib.util.spec_from_file_location("m2f_export_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_export_cli(model, tmp_path):
    tool = _load_tool()
    output = tmp_path / "out" / "model.pt2"
    argv = ["--config-file", CONFIG, "--output", str(output), "--format", "torch_export"]
    argv += ["--height", "64", "--width", "96", "--atol", "1e-4", "--opts", *OPTS]
    assert tool.main(argv) == 0
    assert output.is_file()
    with pytest.raises(SystemExit, match="nowhere.pth"):
        tool.main(argv[: -len(OPTS)] + [*OPTS, "MODEL.WEIGHTS", str(tmp_path / "nowhere.pth")])
