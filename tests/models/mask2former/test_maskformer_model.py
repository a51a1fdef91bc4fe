"""End-to-end MaskFormer on a tiny ResNet-18 config (CPU, random weights)."""

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data.catalog import Metadata
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, ImageList, Instances

from mask2former import add_maskformer2_config
from mask2former.modeling.inference import PostProcessor

NUM_CLASSES = 4


def _tiny_cfg(**test_flags):
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.META_ARCHITECTURE = "MaskFormer"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    head = cfg.MODEL.SEM_SEG_HEAD
    head.NAME = "MaskFormerHead"
    head.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    head.PIXEL_DECODER_NAME = "MSDeformAttnPixelDecoder"
    head.NUM_CLASSES = NUM_CLASSES
    head.CONVS_DIM = 32
    head.MASK_DIM = 32
    head.NORM = "GN"
    head.TRANSFORMER_ENC_LAYERS = 1
    head.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = 4
    mf = cfg.MODEL.MASK_FORMER
    mf.TRANSFORMER_IN_FEATURE = "multi_scale_pixel_decoder"
    mf.HIDDEN_DIM = 32
    mf.NHEADS = 4
    mf.DIM_FEEDFORWARD = 64
    mf.DROPOUT = 0.0
    mf.NUM_OBJECT_QUERIES = 8
    mf.DEC_LAYERS = 3
    mf.CLASS_WEIGHT, mf.MASK_WEIGHT, mf.DICE_WEIGHT = 2.0, 5.0, 5.0
    mf.TRAIN_NUM_POINTS = 64
    for key, value in test_flags.items():
        setattr(mf.TEST, key, value)
    mf.TEST.OBJECT_MASK_THRESHOLD = 0.0
    mf.TEST.OVERLAP_THRESHOLD = 0.0
    cfg.TEST.DETECTIONS_PER_IMAGE = 5
    return cfg


def _image(h, w, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), generator=g).float()


def _train_input(h, w, num_instances, seed, bitmasks=True):
    g = torch.Generator().manual_seed(seed)
    inst = Instances((h, w))
    masks = torch.rand(num_instances, h, w, generator=g) > 0.6
    inst.gt_masks = BitMasks(masks) if bitmasks else masks
    inst.gt_classes = torch.randint(NUM_CLASSES, (num_instances,), generator=g)
    return {"image": _image(h, w, seed), "instances": inst}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = build_model(_tiny_cfg(SEMANTIC_ON=True, PANOPTIC_ON=True, INSTANCE_ON=True))
    # Classes 0-3 are all things; panoptic models keep only thing instances.
    model.postprocessor.thing_ids = [0, 1, 2, 3]
    return model


def test_training_losses_are_finite_and_backward_works(model):
    model.train()
    batch = [
        _train_input(64, 64, 3, seed=1),
        _train_input(64, 48, 2, seed=2, bitmasks=False),  # tensor masks, padded to 64x64
        _train_input(64, 64, 0, seed=3),  # no instances
    ]
    losses = model(batch)
    assert len(losses) == 9  # 3 prediction points x (ce, mask, dice)
    assert set(losses) == set(model.criterion.weight_dict)
    assert all(torch.isfinite(v) for v in losses.values())
    model.zero_grad()
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_training_batch_without_any_instance(model):
    model.train()
    losses = model([_train_input(64, 64, 0, seed=4), _train_input(32, 64, 0, seed=5)])
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_weighted_losses_drop_unknown_keys(model):
    model.train()
    weight_dict = model.criterion.weight_dict
    model.criterion.weight_dict = {"loss_ce": 2.0, "loss_dice": 0.5}
    try:
        torch.manual_seed(0)
        losses = model([_train_input(64, 64, 2, seed=6)])
    finally:
        model.criterion.weight_dict = weight_dict
    assert set(losses) == {"loss_ce", "loss_dice"}


@torch.no_grad()
def test_inference_outputs_at_requested_size(model):
    model.eval()
    inputs = [
        {"image": _image(50, 60, 7)},  # padded to 64x64; output at the image size
        {"image": _image(64, 64, 8), "height": 100, "width": 90},
    ]
    results = model(inputs)
    for res, (h, w) in zip(results, [(50, 60), (100, 90)]):
        assert set(res) == {"sem_seg", "panoptic_seg", "instances"}
        assert res["sem_seg"].shape == (NUM_CLASSES, h, w)
        assert torch.isfinite(res["sem_seg"]).all()
        seg, info = res["panoptic_seg"]
        assert seg.shape == (h, w) and seg.dtype == torch.int32
        assert {int(i) for i in seg.unique()} <= {0} | {s["id"] for s in info}
        inst = res["instances"]
        assert inst.image_size == (h, w) and len(inst) == 5
        assert inst.pred_masks.shape == (5, h, w)
        assert inst.pred_boxes.tensor.shape == (5, 4)
        assert all(s["isthing"] for s in info)


@torch.no_grad()
def test_instance_inference_keeps_only_things_when_panoptic(model):
    model.eval()
    thing_ids = model.postprocessor.thing_ids
    model.postprocessor.thing_ids = []
    try:
        (res,) = model([{"image": _image(64, 64, 12)}])
    finally:
        model.postprocessor.thing_ids = thing_ids
    assert len(res["instances"]) == 0
    assert not any(s["isthing"] for s in res["panoptic_seg"][1])


@torch.no_grad()
def test_inference_does_not_depend_on_batch_mates(model):
    """An image's result is the same alone or batched with another image of the same padded
    size: padding is cropped per image and nothing is shared across the batch.

    (Batching with a *larger* image changes the padded size and hence the result: GroupNorm and
    attention run over padded pixels, as in the official model.)"""
    model.eval()
    small = {"image": _image(50, 60, 9)}
    alone = model([small])[0]
    batched = model([small, {"image": _image(64, 64, 10)}])[0]
    torch.testing.assert_close(batched["sem_seg"], alone["sem_seg"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        batched["instances"].scores, alone["instances"].scores, atol=1e-4, rtol=1e-4
    )


@torch.no_grad()
def test_postprocess_after_inference_for_semantic_only():
    torch.manual_seed(0)
    model = build_model(_tiny_cfg(SEMANTIC_ON=True, PANOPTIC_ON=False, INSTANCE_ON=False))
    assert not model.postprocessor.sem_seg_postprocess_before_inference
    model.eval()
    (res,) = model([{"image": _image(40, 56, 11), "height": 80, "width": 112}])
    assert set(res) == {"sem_seg"}
    assert res["sem_seg"].shape == (NUM_CLASSES, 80, 112)


def test_postprocessor_tasks_and_resize_rule():
    assert PostProcessor(num_classes=3, tasks=["panoptic"]).sem_seg_postprocess_before_inference
    semantic = PostProcessor(num_classes=3, tasks=["semantic"])
    assert not semantic.sem_seg_postprocess_before_inference
    assert PostProcessor(num_classes=3, tasks=["instance", "semantic"]).tasks == (
        "semantic", "instance",
    )
    with pytest.raises(ValueError, match="tasks"):
        PostProcessor(num_classes=3, tasks=[])
    with pytest.raises(ValueError, match="tasks"):
        PostProcessor(num_classes=3, tasks=["depth"])


def test_postprocessor_from_config_reads_thing_ids():
    metadata = Metadata(name="tiny_things", thing_dataset_id_to_contiguous_id={7: 1, 9: 3})
    post = PostProcessor.from_config(_tiny_cfg(PANOPTIC_ON=True), metadata)
    assert post.thing_ids == [1, 3] and "panoptic" in post.tasks
    assert PostProcessor.from_config(_tiny_cfg(PANOPTIC_ON=True), None).thing_ids == []


def test_state_dict_layout(model):
    keys = model.state_dict().keys()
    assert "criterion.empty_weight" in keys
    assert "pixel_mean" not in keys and "pixel_std" not in keys
    assert model.criterion.empty_weight.shape == (NUM_CLASSES + 1,)


def test_prepare_targets_pads_and_accepts_missing_masks(model):
    images = ImageList(torch.zeros(2, 3, 64, 96), [(40, 50), (64, 96)])
    with_masks = Instances((40, 50))
    with_masks.gt_masks = BitMasks(torch.ones(2, 40, 50, dtype=torch.bool))
    with_masks.gt_classes = torch.tensor([1, 3])
    targets = model.prepare_targets([with_masks, Instances((64, 96))], images)
    assert targets[0]["masks"].shape == (2, 64, 96)
    assert targets[0]["masks"][:, :40, :50].all() and not targets[0]["masks"][:, 40:].any()
    assert not targets[0]["masks"][:, :, 50:].any()
    assert targets[0]["labels"].tolist() == [1, 3]
    assert targets[1]["masks"].shape == (0, 64, 96) and targets[1]["labels"].dtype == torch.int64
