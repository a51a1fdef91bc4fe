"""A second model family that only meets the inference contract
(mask2former.modeling.inference) gets the eval forward, Predictor, test-time augmentation and
export with no code of its own. The family here is a toy, defined in the test, not shipped."""

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from torch import nn

from mask2former.export import export_onnx, export_torch, postprocess, prepare_image, run_onnx
from mask2former.modeling.inference import PostProcessor, run_inference
from mask2former.predictor import Predictor
from mask2former.test_time_augmentation import MaskFormerWithTTA

K, Q, C = 3, 4, 8


class ToyFamily(nn.Module):
    """Queries over a stride-4 patch embedding: the smallest network with the contract's
    outputs."""

    def __init__(self):
        super().__init__()
        self.register_buffer("pixel_mean", torch.tensor([120.0, 110.0, 100.0]).view(3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor([60.0, 55.0, 50.0]).view(3, 1, 1))
        self.size_divisibility = 16
        self.embed = nn.Conv2d(3, C, kernel_size=4, stride=4)
        self.queries = nn.Parameter(torch.randn(Q, C))
        self.classifier = nn.Linear(C, K + 1)
        self.postprocessor = PostProcessor(
            num_classes=K, tasks=("semantic", "panoptic", "instance"), thing_ids=[0, 1],
            object_mask_threshold=0.0, overlap_threshold=0.0,
        )

    def forward_network(self, images):
        features = self.embed(images)  # (B, C, H/4, W/4)
        pooled = features.mean(dim=(2, 3))  # (B, C)
        pred_logits = self.classifier(self.queries[None] + pooled[:, None])  # (B, Q, K+1)
        pred_masks = torch.einsum("qc,bchw->bqhw", self.queries, features)  # (B, Q, H/4, W/4)
        return pred_logits, pred_masks

    def forward(self, batched_inputs):
        return run_inference(self, batched_inputs)


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    return ToyFamily().eval()


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).integers(0, 256, (40, 52, 3), dtype=np.uint8)


def _as_input(image):
    return {"image": torch.as_tensor(image.transpose(2, 0, 1).astype("float32"))}


def _assert_same(a, b, atol=1e-5):
    torch.testing.assert_close(a["sem_seg"], b["sem_seg"], atol=atol, rtol=0)
    assert torch.equal(a["panoptic_seg"][0], b["panoptic_seg"][0])
    assert a["panoptic_seg"][1] == b["panoptic_seg"][1]
    torch.testing.assert_close(a["instances"].scores, b["instances"].scores, atol=atol, rtol=0)


@torch.no_grad()
def test_eval_forward_gives_every_task_at_the_image_size(toy, image):
    (result,) = toy([_as_input(image)])
    assert result["sem_seg"].shape == (K, 40, 52)
    seg, segments = result["panoptic_seg"]
    assert seg.shape == (40, 52) and segments  # thresholds 0: segments exist
    assert result["instances"].pred_masks.shape[1:] == (40, 52)
    assert set(result["instances"].pred_classes.tolist()) <= {0, 1}  # things only


@torch.no_grad()
def test_predictor_equals_the_eval_forward(toy, image):
    predictor = Predictor(model=toy, resize=None, input_format="RGB", batch_size=2)
    single = predictor(image)
    _assert_same(single, toy([_as_input(image)])[0])
    flipped = np.ascontiguousarray(image[:, ::-1])
    a, b = predictor([image, flipped])
    _assert_same(a, single)
    assert not torch.equal(b["sem_seg"], a["sem_seg"])
    _assert_same(predictor(image[..., ::-1].copy(), format="BGR"), single)


@torch.no_grad()
def test_tta_with_one_augmentation_equals_the_eval_forward(toy, image):
    cfg = get_cfg()
    cfg.INPUT.FORMAT = "RGB"
    cfg.TEST.AUG.MIN_SIZES = (40,)
    cfg.TEST.AUG.MAX_SIZE = 1000
    cfg.TEST.AUG.FLIP = False
    (result,) = MaskFormerWithTTA(cfg, toy)([_as_input(image)])
    _assert_same(result, toy([_as_input(image)])[0], atol=1e-4)


@torch.no_grad()
def test_onnx_and_torch_export_match_eager(toy, image, tmp_path):
    pytest.importorskip("onnxruntime")
    images, image_size = prepare_image(toy, image, 48, 64)  # (1, 3, 48, 64)
    expected = toy.forward_network(images)
    path = export_onnx(toy, str(tmp_path / "toy.onnx"), height=48, width=64)
    for got in (run_onnx(path, images), export_torch(toy, height=48, width=64).module()(images)):
        for g, e in zip(got, expected, strict=True):
            torch.testing.assert_close(torch.as_tensor(g), e, atol=1e-5, rtol=1e-5)
    (result,) = postprocess(
        toy, *run_onnx(path, images), input_size=(48, 64), image_sizes=[image_size],
        output_sizes=[image.shape[:2]],
    )
    (eager,) = postprocess(
        toy, *expected, input_size=(48, 64), image_sizes=[image_size],
        output_sizes=[image.shape[:2]],
    )
    _assert_same(result, eager, atol=1e-4)
    with pytest.raises(ValueError, match="multiple of the model's size divisibility"):
        export_torch(toy, height=50, width=64)


class OwnForwardFamily(nn.Module):
    """A family without the contract's network (as an R-CNN): its eval forward returns
    results itself; the Predictor still resizes, batches and calls it."""

    def __init__(self):
        super().__init__()
        self.register_buffer("pixel_mean", torch.zeros(3, 1, 1))
        self.size_divisibility = 32
        self.calls = []

    def forward(self, batched_inputs):
        self.calls.append(len(batched_inputs))
        return [{"sem_seg": x["image"].mean(0, keepdim=True), "size": (x["height"], x["width"])}
                for x in batched_inputs]


def test_predictor_runs_a_model_with_its_own_eval_forward(image):
    from detectron2.data import transforms as T

    model = OwnForwardFamily()
    predictor = Predictor(model=model, resize=T.ResizeShortestEdge([20, 20], 100),
                          input_format="RGB", batch_size=2)
    a, b = predictor([image, image])
    assert model.calls == [2] and a["size"] == (40, 52)  # results at the input size
    assert a["sem_seg"].shape[-2:] == (20, 26)  # the model saw the resized image
    with pytest.raises(ValueError, match="forward_network"):
        Predictor(model=model, resize=None, input_format="RGB", compile=True)


def test_eval_network_compiles_when_the_model_asks_and_gives_the_eager_results(toy, image):
    from mask2former.modeling import inference

    inputs = [_as_input(image)]
    keys = list(toy.state_dict())
    with torch.inference_mode():
        expected = toy(inputs)[0]
        assert inference.eval_network(toy) == toy.forward_network  # off by default
        toy.compile_network = True
        try:
            got = toy(inputs)[0]
            compiled = inference._COMPILED[toy]
            assert inference.eval_network(toy) is compiled  # compiled once, then reused
            toy(inputs)
        finally:
            toy.compile_network = False
    assert list(toy.state_dict()) == keys  # the compiled wrapper is kept outside the model
    torch.testing.assert_close(got["sem_seg"], expected["sem_seg"], atol=1e-5, rtol=0)
    torch.testing.assert_close(
        got["instances"].scores, expected["instances"].scores, atol=1e-5, rtol=0
    )
    assert torch.equal(got["panoptic_seg"][0], expected["panoptic_seg"][0])


def test_test_compile_config_key_reaches_the_mask2former_and_fastinst_models():
    from detectron2.modeling import build_model

    from mask2former.config import load_config

    from tiny_model import PANOPTIC_CONFIG, TINY

    fastinst = PANOPTIC_CONFIG.replace(
        "panoptic-segmentation/maskformer2_R18", "instance-segmentation/fastinst_R18"
    )
    for value in (False, True):
        cfg = load_config(PANOPTIC_CONFIG, [*TINY, "TEST.COMPILE", str(value)])
        assert build_model(cfg).compile_network is value
        cfg = load_config(fastinst, ["MODEL.WEIGHTS", "", "TEST.COMPILE", str(value)])
        assert build_model(cfg).compile_network is value
