"""demo/demo.py end to end: a tiny randomly initialized model on two scikit-image photographs."""

import importlib.util
import os
import subprocess
import sys

import cv2
import pytest
import skimage.data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "demo", "demo.py")
CONFIG = os.path.join(
    ROOT, "configs", "synthetic", "panoptic-segmentation", "maskformer2_R18_synthetic.yaml"
)
# Random weights, a smaller model and small test images keep the run short.
TINY = [
    "MODEL.WEIGHTS", "",
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1",
    "MODEL.MASK_FORMER.DEC_LAYERS", "4",
    "INPUT.MIN_SIZE_TEST", "128",
    "INPUT.MAX_SIZE_TEST", "192",
]  # fmt: skip


def _load_demo_module():
    spec = importlib.util.spec_from_file_location("m2f_demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("astronaut", "coffee"):
        image = getattr(skimage.data, name)()
        image = cv2.resize(image, (image.shape[1] // 3, image.shape[0] // 3))
        cv2.imwrite(str(folder / f"{name}.jpg"), image[..., ::-1])
    (folder / "broken.jpg").write_bytes(b"not an image")
    return folder


def test_expand_inputs(photos):
    demo = _load_demo_module()
    everything = [str(photos / n) for n in ("astronaut.jpg", "broken.jpg", "coffee.jpg")]
    assert demo.expand_inputs([str(photos)]) == everything
    assert demo.expand_inputs([str(photos / "c*.jpg")]) == [str(photos / "coffee.jpg")]
    assert demo.expand_inputs([str(photos / "none*.jpg"), "a.png"]) == ["a.png"]


@pytest.mark.slow
def test_demo_draws_images_and_skips_unreadable_ones(photos, tmp_path):
    out = tmp_path / "out"
    inputs = [str(photos / "astronaut.jpg"), str(photos / "broken.jpg"), str(photos / "c*.jpg")]
    cmd = [sys.executable, DEMO, "--config-file", CONFIG, "--input", *inputs]
    cmd += ["--output", str(out), "--confidence-threshold", "0.3", "--opts", *TINY]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "broken.jpg" in result.stderr and "skipping" in result.stderr
    assert sorted(os.listdir(out)) == ["astronaut.png", "coffee.png"]
    picture = cv2.imread(str(out / "astronaut.png"))
    # Three panels (panoptic, instance, semantic) side by side, each as wide as the input.
    assert picture.shape[1] == 3 * (512 // 3)
