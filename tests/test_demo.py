"""demo/demo.py end to end: a tiny randomly initialized model on two scikit-image photographs
and a short generated video."""

import importlib.util
import json
import logging
import os
import subprocess
import sys

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import skimage.data
import torch
from detectron2.modeling import build_model
from PIL import Image
from pycocotools.coco import COCO

from mask2former.config import load_config
from mask2former.data.utils import rgb2id

from tiny_model import NO_THRESHOLDS, PANOPTIC_CONFIG, ROOT, TINY

DEMO = os.path.join(ROOT, "demo", "demo.py")
CONFIG = PANOPTIC_CONFIG
# Random weights, a smaller model and small test images keep the run short.
OPTS = TINY + ["INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192"]


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
    cmd += ["--output", str(out), "--confidence-threshold", "0.3", "--opts", *OPTS]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "broken.jpg" in result.stderr and "skipping" in result.stderr
    assert sorted(os.listdir(out)) == ["astronaut.png", "coffee.png"]
    picture = cv2.imread(str(out / "astronaut.png"))
    # Three panels (panoptic, instance, semantic) side by side, each as wide as the input.
    assert picture.shape[1] == 3 * (512 // 3)


# In-process runs (``main(argv)``) of the demo, with thresholds at 0 so that the random-weight
# model predicts segments everywhere and the drawing visibly changes the pictures.
DATASET_THING_IDS = {1, 2, 3, 4}  # the synthetic dataset's category ids (contiguous 0-3)
DATASET_STUFF_IDS = {11, 12, 13, 14}  # (contiguous 4-7)


@pytest.fixture(scope="module")
def demo_module():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread avoids OpenMP contention on 2 cores
    yield _load_demo_module()
    torch.set_num_threads(threads)


def _run(demo_module, *args, opts=()):
    # The random weights (and so what is predicted) must not depend on the tests run before.
    torch.manual_seed(0)
    argv = ["--config-file", CONFIG, *args, "--opts", *OPTS, *NO_THRESHOLDS, *opts]
    return demo_module.main([str(a) for a in argv])


def _changed(drawn: np.ndarray, original: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose colour the drawing changed (beyond JPEG decoder noise)."""
    return np.abs(drawn.astype(int) - original.astype(int)).sum(-1) > 8


def test_demo_saves_predictions(demo_module, photos, tmp_path):
    out = tmp_path / "out"
    inputs = [photos / "astronaut.jpg", photos / "coffee.jpg"]
    tasks = ["panoptic", "instance", "semantic"]
    args = ["--input", *inputs, "--output", out, "--save-predictions", "--task", *tasks]
    assert _run(demo_module, *args, "--confidence-threshold", "0.0") == 0
    pred = out / "predictions"
    images = json.loads((pred / "images.json").read_text())
    assert [x["file_name"] for x in images] == ["astronaut.jpg", "coffee.jpg"]

    panoptic = json.loads((pred / "panoptic.json").read_text())
    assert [a["image_id"] for a in panoptic["annotations"]] == [1, 2]
    for info, ann in zip(images, panoptic["annotations"]):
        original = cv2.imread(str(photos / info["file_name"]))[..., ::-1]  # RGB
        h, w = original.shape[:2]
        assert (info["height"], info["width"]) == (h, w)
        # The picture: 3 titled panels (panoptic, instance, semantic), each as large as the input.
        picture = cv2.imread(str(out / (os.path.splitext(info["file_name"])[0] + ".png")))
        assert picture.shape == (20 + h + 4, 3 * w, 3)
        panoptic_panel = picture[20 : 20 + h, :w, ::-1]

        ids = rgb2id(np.asarray(Image.open(pred / "panoptic" / ann["file_name"])))
        assert ids.shape == (h, w)
        segments = {s["id"]: s for s in ann["segments_info"]}
        assert set(np.unique(ids)) - {0} == set(segments) and segments
        for segment_id, segment in segments.items():
            assert segment["area"] == int((ids == segment_id).sum())
            expected = DATASET_THING_IDS if segment["isthing"] else DATASET_STUFF_IDS
            assert segment["category_id"] in expected
        # The drawing changes the pixels of the predicted segments.
        assert _changed(panoptic_panel, original)[ids > 0].mean() > 0.9

        semantic = np.asarray(Image.open(pred / "semantic" / ann["file_name"]))
        assert semantic.shape == (h, w)
        assert set(np.unique(semantic)) <= DATASET_THING_IDS | DATASET_STUFF_IDS

    # The instance results load against a ground truth of the same images and categories.
    results = json.loads((pred / "instances.json").read_text())
    assert results and {r["image_id"] for r in results} == {1, 2}
    gt = COCO()
    gt.dataset = {
        "images": images,
        "categories": [{"id": i, "name": str(i)} for i in sorted(DATASET_THING_IDS)],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400,
             "iscrowd": 0, "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]]},
        ],
    }  # fmt: skip
    gt.createIndex()
    dt = gt.loadRes(str(pred / "instances.json"))
    assert len(dt.getAnnIds()) == len(results)
    for ann in dt.loadAnns(dt.getAnnIds()):
        assert ann["category_id"] in DATASET_THING_IDS
        # bbox is the tight box of the mask
        assert np.allclose(ann["bbox"], mask_util.toBbox(ann["segmentation"]))


def _write_video(path, frames: int = 6, size=(96, 128), fps: float = 10.0) -> list[np.ndarray]:
    h, w = size
    base = cv2.resize(skimage.data.coffee()[..., ::-1], (w + 4 * frames, h))  # BGR
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    written = [np.ascontiguousarray(base[:, 4 * i : 4 * i + w]) for i in range(frames)]
    for frame in written:
        writer.write(frame)
    writer.release()
    return written


def _read_video(path) -> tuple[list[np.ndarray], float]:
    video = cv2.VideoCapture(str(path))
    fps = video.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, frame = video.read()
        if not ok:
            break
        frames.append(frame)
    video.release()
    return frames, fps


def test_demo_video_in_batches(demo_module, tmp_path, caplog):
    source, output = tmp_path / "in.mp4", tmp_path / "out" / "drawn.mp4"
    _write_video(source)
    inputs, _ = _read_video(source)  # the decoded frames the demo sees
    args = ["--video-input", source, "--output", output, "--batch-frames", "4"]
    with caplog.at_level(logging.INFO, logger="mask2former.demo"):
        assert _run(demo_module, *args, "--task", "panoptic") == 0
    frames, fps = _read_video(output)
    assert len(frames) == 6 and fps == pytest.approx(10.0)
    assert all(frame.shape == (96, 128, 3) for frame in frames)
    # Every frame is drawn on: the (panoptic) segments cover it, so most pixels change.
    assert all(_changed(f, i).mean() > 0.5 for f, i in zip(frames, inputs))
    assert any("6 frames" in r.message and "frames/s" in r.message for r in caplog.records)


def test_demo_clear_errors(demo_module, photos, tmp_path):
    missing = tmp_path / "missing.jpg"
    with pytest.raises(SystemExit, match="missing.jpg"):
        _run(demo_module, "--input", missing, "--output", tmp_path / "out")
    with pytest.raises(SystemExit, match="missing.mp4"):
        _run(demo_module, "--video-input", tmp_path / "missing.mp4", "--output", tmp_path / "o.mp4")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00not a video" * 100)
    with pytest.raises(SystemExit, match="garbage.mp4"):
        _run(demo_module, "--video-input", garbage, "--output", tmp_path / "o.mp4")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(SystemExit, match="a_file"):
        _run(demo_module, "--input", photos / "coffee.jpg", "--output", blocker / "out")


def test_demo_reports_weights_that_do_not_fit(demo_module, photos, tmp_path):
    torch.manual_seed(0)
    cfg = load_config(CONFIG, OPTS)
    weights = tmp_path / "eight_classes.pth"
    torch.save({"model": build_model(cfg).state_dict()}, weights)
    opts = ["MODEL.WEIGHTS", str(weights), "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5"]
    with pytest.raises(SystemExit, match=r"(?s)eight_classes.pth.*class_embed"):
        _run(demo_module, "--input", photos / "coffee.jpg", "--output", tmp_path, opts=opts)
