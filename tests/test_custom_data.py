"""The README's worked example, end to end: your own data in each of the three formats, declared
in a config (``DATASETS.CUSTOM``), trained and evaluated with ``train_net.py`` alone, fine-tuned
from a checkpoint with another number of classes (the built-in 8-class panoptic model), and
drawn by the demo with its class names.

The data is the generated dataset re-labelled by ``python -m mask2former.data.relabel_example``
(two shape classes merged, other names, stuff categories first in the panoptic json). CPU-sized:
64-pixel images, a shallower model, two iterations.
"""

import importlib.util
import json
import logging
import os
import subprocess
import sys

import pytest
import torch
from detectron2.modeling import build_model

from mask2former.config import load_config
from mask2former.data import relabel_example
from mask2former.data.synthetic import generate_synthetic_dataset
from mask2former.predictor import Predictor

from tiny_model import PANOPTIC_CONFIG, ROOT

pytestmark = pytest.mark.slow

TRAIN_NET = os.path.join(ROOT, "train_net.py")
DEMO = os.path.join(ROOT, "demo", "demo.py")
# Tiny images, a shallower model, two iterations: the same model for every format.
MODEL = [
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1",
    "MODEL.MASK_FORMER.DEC_LAYERS", "2",
    "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "96",
]  # fmt: skip
TINY = MODEL + [
    "INPUT.IMAGE_SIZE", "64",
    "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "INPUT.MAX_SIZE_TRAIN", "96",
    "INPUT.CROP.SIZE", "(64, 64)",
    "INPUT.SIZE_DIVISIBILITY", "64",
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.WARMUP_ITERS", "0",
    "SOLVER.MAX_ITER", "2",
    "DATALOADER.NUM_WORKERS", "0",
    "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "784",
]  # fmt: skip
CLASSES = {
    "instance": ["disc", "polygon", "star"],
    "panoptic": ["air", "grass", "gravel", "wall", "disc", "polygon", "star"],
    "semantic": ["shape", "sky", "ground", "brick"],
}


def _start(kind: str, extra=()) -> subprocess.Popen:
    args = [sys.executable, TRAIN_NET, "--config-file", f"my_shapes/{kind}.yaml", *TINY, *extra]
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def _finish(proc: subprocess.Popen, kind: str) -> None:
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, f"train_net.py on my_shapes/{kind}.yaml failed:\n{stderr[-5000:]}"


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _last_metrics(kind: str) -> dict:
    lines = _read(f"output/my_shapes/{kind}/metrics.json").splitlines()
    return json.loads(lines[-1])


def _official_checkpoint(path: str) -> None:
    """A stand-in for an official checkpoint: the built-in synthetic panoptic model (8 classes,
    random weights) with the example's model settings."""
    cfg = load_config(PANOPTIC_CONFIG, MODEL + ["MODEL.DEVICE", "cpu"])
    torch.save({"model": build_model(cfg).state_dict()}, path)


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """Generate, re-label and train the three formats side by side; the semantic model is
    fine-tuned from an 8-class checkpoint (-> 4 classes)."""
    folder = tmp_path_factory.mktemp("custom_data")
    cwd = os.getcwd()
    os.chdir(folder)  # the example's relative paths, as in the README
    try:
        generate_synthetic_dataset("generated", num_train=4, num_val=2, min_size=64, max_size=96,
                                   progress=False)
        relabel_example.main(["--synthetic-root", "generated", "--out", "my_shapes",
                              "--configs", os.path.join(ROOT, "configs", "synthetic")])
        _official_checkpoint("official.pth")
        runs = {
            "instance": _start("instance"),
            "panoptic": _start("panoptic"),
            "semantic": _start("semantic", ["MODEL.WEIGHTS", "official.pth",
                                            "MODEL.WEIGHTS_ALLOW_SHAPE_MISMATCH", "True"]),
        }
        for kind, proc in runs.items():
            _finish(proc, kind)
        yield folder
    finally:
        os.chdir(cwd)


def test_each_format_is_evaluated_with_its_evaluator(example, monkeypatch):
    monkeypatch.chdir(example)
    instance = _last_metrics("instance")
    assert "segm/AP" in instance and "sem_seg/mIoU" not in instance
    panoptic = _last_metrics("panoptic")
    for key in ("panoptic_seg/PQ", "segm/AP", "sem_seg/mIoU"):
        assert key in panoptic, sorted(panoptic)
    semantic = _last_metrics("semantic")
    assert "sem_seg/mIoU" in semantic and "segm/AP" not in semantic
    # Per-class results carry the dataset's class names.
    assert "sem_seg/IoU-ground" in semantic and "sem_seg/IoU-wall" in panoptic
    assert "segm/AP-polygon" in instance
    log = _read("output/my_shapes/panoptic/log.txt")
    assert "Dataset 'my_shapes_train_panoptic': images and label files checked" in log


def test_fine_tune_names_the_reinitialised_class_head_once(example, monkeypatch):
    monkeypatch.chdir(example)
    log = _read("output/my_shapes/semantic/log.txt")
    naming = [line for line in log.splitlines() if "class_embed.weight" in line]
    assert len(naming) == 1, naming
    assert "Re-initialised" in naming[0]
    assert "class_embed.weight (9, 64) -> (5, 64)" in naming[0]


def _load_demo_module():
    spec = importlib.util.spec_from_file_location("m2f_demo_custom", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kind", ["instance", "panoptic", "semantic"])
def test_demo_draws_with_the_dataset_classes(example, kind, caplog, monkeypatch):
    monkeypatch.chdir(example)
    demo = _load_demo_module()
    image = "generated/val/images/000000.jpg"
    out = f"demo_{kind}"
    with caplog.at_level(logging.INFO, logger="mask2former.demo"):
        code = demo.main([
            "--config-file", f"my_shapes/{kind}.yaml", "--input", image, "--output", out,
            "--save-predictions", "--opts", *MODEL,
            "MODEL.WEIGHTS", f"output/my_shapes/{kind}/model_final.pth",
        ])
    assert code == 0
    assert os.path.isfile(os.path.join(out, "000000.png"))
    assert f"{CLASSES[kind]}" in caplog.text
    if kind == "instance":
        results = json.loads(_read(os.path.join(out, "predictions", "instances.json")))
        assert {r["category_id"] for r in results} <= {1, 2, 4}  # the json's category ids


def test_predictor_takes_the_declaration(example, monkeypatch):
    monkeypatch.chdir(example)
    predictor = Predictor.from_config_file(
        "my_shapes/panoptic.yaml", weights="output/my_shapes/panoptic/model_final.pth",
        opts=MODEL,
    )
    assert predictor.metadata.stuff_classes == CLASSES["panoptic"]
    assert predictor.metadata.thing_classes == ["disc", "polygon", "star"]
    assert predictor.metadata.stuff_colors[0] == [70, 130, 180]
