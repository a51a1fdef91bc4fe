"""The SegViT meta-architecture: configs build, inference invariant, sliding windows, Shrunk
forward, Predictor and ONNX export (tiny sizes, CPU)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

from mask2former.config import load_config
from mask2former.export import export_onnx, postprocess, prepare_image, run_onnx
from mask2former.modeling.postprocessing import semantic_inference
from mask2former.models.segvit.segvit_model import window_origins
from mask2former.predictor import Predictor

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
TINY = str(CONFIGS / "synthetic" / "semantic-segmentation" / "segvit_tiny_synthetic.yaml")
SEGVIT_CONFIGS = sorted(str(p) for p in CONFIGS.rglob("segvit_*.yaml"))
# Shrink the released models to CPU size, keeping their structure (heads, stages, QD, classes).
SMALL = ["MODEL.VIT.EMBED_DIM", "32", "MODEL.VIT.NUM_HEADS", "2", "MODEL.SEGVIT.HIDDEN_DIM", "16",
         "MODEL.SEGVIT.NHEADS", "2", "MODEL.SEGVIT.DIM_FEEDFORWARD", "32", "MODEL.DEVICE", "cpu",
         "MODEL.WEIGHTS", ""]


def tiny_model(*opts):
    torch.manual_seed(0)
    cfg = load_config(TINY, ["MODEL.VIT.IMG_SIZE", "64", "MODEL.VIT.PATCH_SIZE", "8",
                             "MODEL.VIT.EMBED_DIM", "32", "MODEL.VIT.NUM_HEADS", "4",
                             "MODEL.SEGVIT.HIDDEN_DIM", "16", "MODEL.SEGVIT.DIM_FEEDFORWARD", "32",
                             *opts])
    return build_model(cfg).eval()


@pytest.mark.parametrize("path", SEGVIT_CONFIGS, ids=lambda p: Path(p).name)
def test_every_segvit_config_builds_and_trains_a_step(path):
    cfg = load_config(path, SMALL)
    crop = cfg.MODEL.VIT.IMG_SIZE
    assert cfg.MODEL.SEGVIT.TEST.SLIDE_CROP == (crop, crop)
    cfg.MODEL.VIT.IMG_SIZE = 64  # the Shrunk QU grid follows the crop: 4x4 tokens
    model = build_model(cfg)
    shrunk = type(model.sem_seg_head).__name__ == "ShrunkATMHead"
    assert (cfg.MODEL.VIT.SHRINK_INDEX >= 0) == shrunk
    # One training step on a 64x64 input: every loss is finite.
    image = torch.randint(0, 255, (3, 64, 64)).float()
    label = torch.randint(0, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, (64, 64))
    losses = model([{"image": image, "sem_seg": label}])
    assert all(torch.isfinite(v) for v in losses.values())
    assert len(losses) == 9  # 3 predictions x (ce, mask, dice)


def test_inference_invariant_one_hot_classes_and_gt_masks_reproduce_the_labels():
    labels = torch.randint(0, 3, (16, 20))
    masks = torch.stack([(labels == c).float() * 40 - 20 for c in range(3)])  # (K, H, W)
    logits = torch.full((3, 4), -20.0)
    logits[torch.arange(3), torch.arange(3)] = 20.0  # query c -> class c
    assert torch.equal(semantic_inference(logits, masks).argmax(0), labels)


def test_window_origins_follow_mmseg():
    assert window_origins(64, 80, 60) == [0]
    assert window_origins(100, 40, 30) == [0, 30, 60]
    assert window_origins(96, 64, 48) == [0, 32]


@torch.no_grad()
def test_sliding_window_as_large_as_the_image_equals_whole_image():
    model = tiny_model()
    image = torch.randint(0, 255, (3, 48, 72)).float()
    inputs = [{"image": image, "height": 50, "width": 70}]
    whole = model(inputs)[0]["sem_seg"]
    model.test_mode = "slide"
    model.slide_crop, model.slide_stride = (64, 80), (32, 32)
    torch.testing.assert_close(model(inputs)[0]["sem_seg"], whole, atol=1e-6, rtol=0)
    assert whole.shape == (8, 50, 70)


@torch.no_grad()
def test_overlapping_windows_are_averaged():
    model = tiny_model()
    model.test_mode = "slide"
    model.slide_crop, model.slide_stride = (32, 32), (16, 16)
    image = torch.randint(0, 255, (3, 32, 48)).float()
    got = model([{"image": image}])[0]["sem_seg"]  # windows at x = 0, 16
    norm = (image - model.pixel_mean) / model.pixel_std

    def window(x):
        logits, masks = model.forward_network(norm[None, :, :, x : x + 32])
        up = torch.nn.functional.interpolate(masks, size=(32, 32), mode="bilinear")
        return semantic_inference(logits[0], up[0])

    a, b = window(0), window(16)
    torch.testing.assert_close(got[:, :, :16], a[:, :, :16])
    torch.testing.assert_close(got[:, :, 16:32], (a[:, :, 16:] + b[:, :, :16]) / 2)
    torch.testing.assert_close(got[:, :, 32:], b[:, :, 16:])


@torch.no_grad()
def test_shrunk_model_gives_the_plain_models_output_shapes():
    shrunk = tiny_model("MODEL.VIT.DEPTH", "6", "MODEL.VIT.SHRINK_INDEX", "2",
                        "MODEL.VIT.OUT_INDICES", "[1, 5]",
                        "MODEL.SEM_SEG_HEAD.NAME", "ShrunkATMHead", "MODEL.SEGVIT.NUM_STAGES", "2",
                        "MODEL.VIT.PATCH_SIZE", "16", "MODEL.SEGVIT.TEST.MODE", "slide",
                        "MODEL.SEGVIT.TEST.SLIDE_CROP", "(64, 64)",
                        "MODEL.SEGVIT.TEST.SLIDE_STRIDE", "(48, 48)")
    plain = tiny_model("MODEL.VIT.PATCH_SIZE", "16")
    images = torch.randn(2, 3, 64, 64)
    for a, b in zip(shrunk.forward_network(images), plain.forward_network(images)):
        assert a.shape == b.shape
    assert shrunk.size_divisibility == 32
    out = shrunk([{"image": torch.randint(0, 255, (3, 80, 100)).float()}])[0]["sem_seg"]
    assert out.shape == (8, 80, 100)  # windows padded to the crop


@torch.no_grad()
def test_predictor_and_onnx_export_run_segvit(tmp_path):
    pytest.importorskip("onnxruntime")
    model = tiny_model()
    image = np.random.default_rng(0).integers(0, 256, (40, 52, 3), dtype=np.uint8)
    predictor = Predictor(model=model, resize=None, input_format="RGB")
    result = predictor(image)
    eager = model([{"image": torch.as_tensor(image.transpose(2, 0, 1).astype("float32"))}])[0]
    torch.testing.assert_close(result["sem_seg"], eager["sem_seg"], atol=1e-5, rtol=0)
    images, image_size = prepare_image(model, image, 48, 64)
    path = export_onnx(model, str(tmp_path / "segvit.onnx"), height=48, width=64)
    onnx_out = run_onnx(path, images)
    for got, expected in zip(onnx_out, model.forward_network(images)):
        torch.testing.assert_close(torch.as_tensor(got), expected, atol=1e-4, rtol=1e-4)
    (res,) = postprocess(model, *onnx_out, input_size=(48, 64), image_sizes=[image_size],
                         output_sizes=[image.shape[:2]])
    assert res["sem_seg"].shape == (8, 40, 52)


def test_pascal_context_59_is_registered_with_59_classes_and_background_ignored():
    from detectron2.data import DatasetCatalog, MetadataCatalog

    for split in ("train", "val"):
        name = f"pascal_context_59_sem_seg_{split}"
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert len(meta.stuff_classes) == 59 and meta.ignore_label == 255
    cfg = load_config(str(CONFIGS / "pascal-context-59" / "semantic-segmentation" / "segvit"
                          / "segvit_vit-l_480_80k.yaml"))
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 59
