"""mask2former.predictor.Predictor on a tiny randomly initialised synthetic-config model (CPU),
eager backend; the other backends are in test_predictor_backends.py."""

import cv2
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from mask2former.predictor import Predictor

from tiny_model import NO_THRESHOLDS, PANOPTIC_CONFIG, TINY

CONFIG = PANOPTIC_CONFIG
# Random weights, a smaller model, small images; thresholds 0 so that panoptic segments exist.
OPTS = TINY + NO_THRESHOLDS + ["INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "160"]
# Resized (H, W): 96x128, 128x96, 96x128, 96x144, 96x125. The first, third and last pad to
# 96x128 and share a forward pass; the others run alone.
SIZES = [(96, 128), (120, 90), (48, 64), (100, 150), (96, 125)]
# Pixels where the two best kept queries' ``score * sigmoid(mask)`` are closer than this are
# "borderline": float32 noise (~1e-6) between batched and single runs may flip them.
BORDERLINE = 1e-4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP start-up and contention on 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def predictor(one_thread):
    torch.manual_seed(0)
    return Predictor.from_config_file(CONFIG, opts=OPTS, batch_size=3, backend="eager")


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    out = []
    for h, w in SIZES:
        # Smooth random colour fields (a small random image, upscaled) rather than noise.
        small = rng.integers(0, 256, (max(h // 16, 2), max(w // 16, 2), 3), dtype=np.uint8)
        out.append(cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR))
    return out


def _decided_pixels(predictor: Predictor, image: np.ndarray) -> torch.Tensor:
    """(H, W) bool: pixels whose panoptic winner is not borderline (see BORDERLINE)."""
    model = predictor.model
    inputs = predictor._to_input(image)
    images = model.preprocess_image([inputs])
    with torch.inference_mode():
        logits, masks = predictor.network(images.tensor)
    masks = F.interpolate(masks, size=images.tensor.shape[-2:], mode="bilinear")
    h, w = images.image_sizes[0]
    masks = F.interpolate(masks[:, :, :h, :w], size=image.shape[:2], mode="bilinear")[0]
    scores, labels = logits[0].softmax(-1).max(-1)  # (Q,), (Q,)
    keep = labels.ne(logits.shape[-1] - 1) & (scores > model.postprocessor.object_mask_threshold)
    prob = scores[keep].view(-1, 1, 1) * masks[keep].sigmoid()  # (Q', H, W)
    top2 = prob.topk(2, dim=0).values  # (2, H, W)
    return (top2[0] - top2[1]) > BORDERLINE


def test_batch_equals_single_images(predictor, images, monkeypatch):
    alone = [predictor(image) for image in images]
    batch_sizes = []
    run_batch = predictor._run_batch
    monkeypatch.setattr(
        predictor, "_run_batch", lambda inputs: batch_sizes.append(len(inputs)) or run_batch(inputs)
    )
    batched = predictor(images)
    assert sorted(batch_sizes) == [1, 1, 3]  # the three images padded to 96x128 share a batch
    assert isinstance(batched, list) and len(batched) == len(images)
    for image, a, b in zip(images, alone, batched):
        assert set(a) == {"sem_seg", "panoptic_seg", "instances"}
        assert a["sem_seg"].shape == (8, *image.shape[:2])
        torch.testing.assert_close(b["sem_seg"], a["sem_seg"], atol=1e-5, rtol=0)
        ids_a, info_a = a["panoptic_seg"]
        ids_b, info_b = b["panoptic_seg"]
        assert ids_a.shape == image.shape[:2] and len(info_a) > 0
        assert info_b == info_a
        decided = _decided_pixels(predictor, image)
        assert decided.float().mean() > 0.95
        assert torch.equal(ids_a[decided], ids_b[decided])
        inst_a, inst_b = a["instances"], b["instances"]
        assert inst_a.image_size == image.shape[:2]
        torch.testing.assert_close(inst_b.scores, inst_a.scores, atol=1e-5, rtol=0)
        assert torch.equal(inst_b.pred_classes, inst_a.pred_classes)
        # Binary masks may differ only where a mask logit is within noise of 0.
        assert (inst_b.pred_masks != inst_a.pred_masks).float().mean() < 1e-4


def test_batch_size_does_not_change_results(predictor, images):
    one_by_one = Predictor(
        model=predictor.model, resize=predictor.resize, input_format="RGB", batch_size=1
    )
    for a, b in zip(one_by_one(images), predictor(images)):
        torch.testing.assert_close(b["sem_seg"], a["sem_seg"], atol=1e-5, rtol=0)


def test_boxes_are_the_mask_extents(predictor, images):
    instances = predictor(images[3])["instances"]
    assert len(instances) > 0
    for mask, box in zip(instances.pred_masks, instances.pred_boxes.tensor):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        if len(xs) == 0:
            assert not box.any()
            continue
        # Detectron2 boxes: (x0, y0, x1, y1) with x1, y1 one past the last mask pixel.
        expected = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
        assert torch.equal(box, expected)


def test_bfloat16_autocast_is_close_to_float32(predictor, images):
    bf16 = Predictor(
        model=predictor.model, resize=predictor.resize, input_format="RGB", dtype="bfloat16"
    )
    model = predictor.model
    for image in images[:3]:
        tensor = model.preprocess_image([predictor._to_input(image)]).tensor
        with torch.inference_mode():
            logits32, masks32 = predictor.network(tensor)
            with bf16._autocast():
                logits16, masks16 = bf16.network(tensor)
        assert logits16.dtype == torch.bfloat16
        # bfloat16 keeps 8 mantissa bits (relative step 2**-8 = 0.4%): class probabilities
        # within 0.02, mask probabilities within 0.06 (mean 0.005).
        torch.testing.assert_close(
            logits16.float().softmax(-1), logits32.softmax(-1), atol=0.02, rtol=0
        )
        prob_diff = (masks16.float().sigmoid() - masks32.sigmoid()).abs()
        assert prob_diff.max() < 0.06 and prob_diff.mean() < 0.005
        # Post-processed outputs are float32; semantic scores (sums over queries) within 0.06.
        result16, result32 = bf16(image), predictor(image)
        assert result16["sem_seg"].dtype == torch.float32
        torch.testing.assert_close(result16["sem_seg"], result32["sem_seg"], atol=0.06, rtol=0)


def test_file_paths_and_channel_order(predictor, images, tmp_path):
    image = images[1]
    path = tmp_path / "image.png"
    cv2.imwrite(str(path), image[..., ::-1])  # cv2 writes BGR
    expected = predictor(image)["sem_seg"]
    torch.testing.assert_close(predictor(str(path))["sem_seg"], expected, atol=0, rtol=0)
    from_bgr = predictor(np.ascontiguousarray(image[..., ::-1]), format="BGR")["sem_seg"]
    torch.testing.assert_close(from_bgr, expected, atol=0, rtol=0)
    mixed = predictor([path, image])
    torch.testing.assert_close(mixed[0]["sem_seg"], mixed[1]["sem_seg"], atol=0, rtol=0)


def test_clear_errors_for_bad_inputs(predictor, tmp_path):
    missing = str(tmp_path / "missing.jpg")
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        predictor(missing)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.jpg"):
        predictor([str(broken)])
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        predictor(np.zeros((32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="format"):
        predictor(np.zeros((32, 32, 3), np.uint8), format="BGRA")
    with pytest.raises(ValueError, match="dtype"):
        Predictor(model=predictor.model, resize=None, input_format="RGB", dtype="int8")


def test_weights_are_loaded_and_checked(predictor, images, tmp_path):
    path = str(tmp_path / "model.pth")
    torch.save({"model": predictor.model.state_dict()}, path)
    torch.manual_seed(1)  # another random initialisation, overwritten by the weights
    loaded = Predictor.from_config_file(CONFIG, weights=path, opts=OPTS)
    torch.testing.assert_close(
        loaded(images[0])["sem_seg"], predictor(images[0])["sem_seg"], atol=0, rtol=0
    )
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        Predictor.from_config_file(CONFIG, weights=str(tmp_path / "nowhere.pth"), opts=OPTS)
    other = OPTS + ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5"]
    with pytest.raises(ValueError, match=r"(?s)model.pth.*class_embed"):
        Predictor.from_config_file(CONFIG, weights=path, opts=other)
