"""The FastInst model end to end: configs, training on the generated data, inference, the
Predictor and export (tiny sizes, CPU)."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.structures import Instances

from mask2former.config import load_config
from mask2former.data.dataset_mappers.build import build_train_mapper
from mask2former.export import export_onnx, postprocess, prepare_image, run_onnx
from mask2former.modeling.inference import InferenceNetwork
from mask2former.models.fastinst import FastInst
from mask2former.predictor import Predictor

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
SYNTHETIC = str(CONFIGS / "synthetic/instance-segmentation/fastinst_R18_synthetic.yaml")
FASTINST_CONFIGS = sorted(
    str(p) for p in CONFIGS.rglob("*.yaml")
    if p.name.startswith("fastinst_") or p.name == "Fast-COCO-InstanceSegmentation.yaml"
)
# Random weights; a 1-layer decoder, few points and queries, small images.
TINY = ["MODEL.WEIGHTS", "", "MODEL.FASTINST.DEC_LAYERS", "1",
        "MODEL.FASTINST.TRAIN_NUM_POINTS", "256", "INPUT.IMAGE_SIZE", "96",
        "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96"]


def tiny_model(opts=()):
    torch.manual_seed(0)
    return build_model(load_config(SYNTHETIC, TINY + list(opts)))


def test_every_fastinst_config_loads_with_the_official_values():
    assert len(FASTINST_CONFIGS) == 7  # 5 official models, their base, the synthetic one
    for path in FASTINST_CONFIGS:
        cfg = load_config(path)
        assert cfg.MODEL.META_ARCHITECTURE == "FastInst"
        assert cfg.MODEL.FASTINST.TRANSFORMER_DECODER_NAME == "FastInstDecoder"
        assert cfg.MODEL.FASTINST.NUM_AUX_QUERIES == 8
        name = Path(path).name
        if "_x1_" in name or "_x3_" in name:
            assert cfg.MODEL.FASTINST.DEC_LAYERS == (1 if "_x1_" in name else 3)
            assert cfg.INPUT.MIN_SIZE_TEST == (576 if name.endswith("576.yaml") else 640)
            assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 80


def test_config_defaults_are_the_official_ones():
    fi = load_config().MODEL.FASTINST
    assert (fi.CLASS_WEIGHT, fi.MASK_WEIGHT, fi.DICE_WEIGHT) == (2.0, 5.0, 5.0)
    assert (fi.LOCATION_WEIGHT, fi.PROPOSAL_WEIGHT, fi.NO_OBJECT_WEIGHT) == (1000.0, 20.0, 0.1)
    assert (fi.HIDDEN_DIM, fi.NUM_OBJECT_QUERIES, fi.NUM_AUX_QUERIES) == (256, 100, 8)
    assert (fi.NHEADS, fi.DIM_FEEDFORWARD, fi.DEC_LAYERS, fi.PRE_NORM) == (8, 1024, 10, False)
    assert (fi.TRAIN_NUM_POINTS, fi.OVERSAMPLE_RATIO, fi.IMPORTANCE_SAMPLE_RATIO) == (
        12544, 3.0, 0.75)
    assert fi.TEST.INSTANCE_ON and not fi.TEST.SEMANTIC_ON and not fi.TEST.PANOPTIC_ON
    assert fi.SIZE_DIVISIBILITY == -1


def test_mismatched_widths_are_refused_with_the_key_names():
    with pytest.raises(ValueError, match="HIDDEN_DIM.*CONVS_DIM"):
        tiny_model(["MODEL.FASTINST.HIDDEN_DIM", "32"])


def test_dcn_backbone_runs_on_the_cpu():
    from mask2former.models.fastinst.backbone import ResNetVd

    torch.manual_seed(0)
    backbone = ResNetVd(depth=50, norm="BN", deform_on_per_stage=(False, False, True, True))
    features = backbone(torch.randn(1, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in features.items()} == {
        "res2": (1, 256, 16, 16), "res3": (1, 512, 8, 8), "res4": (1, 1024, 4, 4),
        "res5": (1, 2048, 2, 2)}
    block = backbone.layer3[0]
    assert not block.conv2_offset.weight.any()  # zero offsets: starts as a plain conv
    torch.testing.assert_close(
        block.conv2(features["res3"][:, :256], torch.zeros(1, 18, 4, 4)),
        torch.nn.functional.conv2d(features["res3"][:, :256], block.conv2.weight, stride=2,
                                   padding=1), atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def generated_batch(synthetic_data):
    """Two images of the generated instance data through the config's training mapper."""
    cfg = load_config(SYNTHETIC, TINY)
    mapper = build_train_mapper(cfg)
    records = DatasetCatalog.get("synthetic_train_instance")[:2]
    np.random.seed(0)
    return [mapper(copy.deepcopy(r)) for r in records]


def test_losses_fall_on_the_generated_data(generated_batch):
    model = tiny_model(["SOLVER.BASE_LR", "0.001"]).train()
    assert isinstance(model, FastInst)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    totals = []
    for _ in range(12):
        losses = model(generated_batch)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
    # 1 layer: main + 2 aux sets (guided, initial) + the proposal loss
    assert set(losses) == {f"loss_{n}{s}" for n in ("ce", "mask", "dice")
                           for s in ("", "_0", "_1")} | {"loss_proposal"}
    assert np.mean(totals[-3:]) < 0.8 * np.mean(totals[:3])


def test_training_with_an_image_without_objects(generated_batch):
    model = tiny_model().train()
    empty = dict(generated_batch[1])
    empty["instances"] = Instances(tuple(empty["image"].shape[-2:]),
                                   gt_classes=torch.zeros(0, dtype=torch.int64),
                                   gt_masks=torch.zeros(0, *empty["image"].shape[-2:]))
    losses = model([generated_batch[0], empty])
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())


def test_eval_forward_and_predictor():
    model = tiny_model().eval()
    image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    with torch.no_grad():
        (result,) = model([{"image": torch.as_tensor(image.transpose(2, 0, 1).astype("float32"))}])
    instances = result["instances"]
    assert set(result) == {"instances"}
    assert instances.pred_masks.shape[1:] == (50, 70) and len(instances) <= 100
    assert ((instances.scores >= 0) & (instances.scores <= 1)).all()
    predicted = Predictor(model=model, resize=None, input_format="RGB")(image)["instances"]
    torch.testing.assert_close(predicted.scores, instances.scores, atol=1e-5, rtol=0)


def test_onnx_export_matches_eager(tmp_path):
    pytest.importorskip("onnxruntime")
    model = tiny_model().eval()
    image = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    images, image_size = prepare_image(model, image, 64, 64)
    with torch.no_grad():
        expected = InferenceNetwork(model)(images)
    assert expected[1].shape[-2:] == (8, 8)  # masks at 1/8
    path = export_onnx(model, str(tmp_path / "fastinst.onnx"), height=64, width=64)
    got = run_onnx(path, images)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(torch.as_tensor(g), e, atol=1e-4, rtol=1e-4)
    (result,) = postprocess(model, *got, input_size=(64, 64), image_sizes=[image_size],
                            output_sizes=[image.shape[:2]])
    assert result["instances"].pred_masks.shape[1:] == (48, 80)


def test_fastinst_mapper_pads_to_a_multiple_and_keeps_masks_aligned(synthetic_data):
    from mask2former.models.fastinst.mapper import FastInstInstanceDatasetMapper

    base = CONFIGS / "coco/instance-segmentation/Fast-COCO-InstanceSegmentation.yaml"
    cfg = load_config(str(base),
                      ["INPUT.MIN_SIZE_TRAIN", "(90, 100)", "INPUT.MAX_SIZE_TRAIN", "150",
                       "INPUT.CROP.RESIZE.MIN_SIZE", "(80,)", "INPUT.CROP.SIZE", "(60, 70)",
                       "INPUT.SIZE_DIVISIBILITY", "32"])
    mapper = FastInstInstanceDatasetMapper(cfg, is_train=True)
    record = DatasetCatalog.get("synthetic_train_instance")[0]
    np.random.seed(0)
    for _ in range(4):  # both branches (with and without the crop)
        out = mapper(record)
        h, w = out["image"].shape[-2:]
        assert h % 32 == 0 and w % 32 == 0
        instances = out["instances"]
        assert instances.image_size == (h, w) and instances.gt_masks.shape[-2:] == (h, w)
        assert len(instances.gt_classes) == len(instances.gt_masks)
    with pytest.raises(ValueError, match="training mapper"):
        FastInstInstanceDatasetMapper(cfg, is_train=False)
