"""A tiny Transfiner built from the synthetic config: head shapes, training step, zero-foreground
RoIs, batch independence and the Predictor (spec 13.3, 13.8, 13.9, 13.11)."""

import numpy as np
import pytest
import torch
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

import mask2former  # noqa: F401  (registers the components)
from mask2former.config import load_config
from mask2former.predictor import Predictor

CONFIG = "configs/synthetic/instance-segmentation/transfiner_R18_synthetic.yaml"
TINY = [
    "MODEL.FPN.OUT_CHANNELS", "16", "MODEL.ROI_MASK_HEAD.CONV_DIM", "16",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "32", "MODEL.TRANSFINER.INC_CONV_DIMS", "(16, 16, 16, 8)",
    "MODEL.TRANSFINER.HIDDEN_DIM", "16", "MODEL.TRANSFINER.DIM_FEEDFORWARD", "32",
    "MODEL.TRANSFINER.NODES_PER_LEVEL_TRAIN", "20", "MODEL.TRANSFINER.MIN_NODES_PER_LEVEL", "5",
    "MODEL.TRANSFINER.MAX_REFINE_ROIS_TRAIN", "3", "MODEL.TRANSFINER.MAX_REFINE_ROIS_TEST", "3",
    "MODEL.TRANSFINER.INC_THRESH_TEST", "(0.5, 0.6, 0.7)",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "5",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "32",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "16", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96",
    # half-size quadtree (coarse 14, levels 14/28/56) keeps the CPU tests fast
    "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION", "7", "MODEL.TRANSFINER.LEVEL_SIZES", "(14, 28, 56)",
]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(load_config(CONFIG, TINY))
    # random, mostly low incoherence (else every cell is 0.5): sparse node sets of different
    # sizes per RoI, as a trained detector gives
    torch.nn.init.normal_(m.roi_heads.mask_head.predictor_uncertain.weight, std=2.0)
    torch.nn.init.constant_(m.roi_heads.mask_head.predictor_uncertain.bias, -15.0)
    return m


def _gt_instances(h=64, w=64):
    masks = torch.zeros(2, h, w, dtype=torch.bool)
    masks[0, 8:40, 10:30] = True
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    masks[1] = ((yy - 40) ** 2 + (xx - 44) ** 2) < 144
    inst = Instances((h, w))
    inst.gt_boxes = BitMasks(masks).get_bounding_boxes()
    inst.gt_classes = torch.tensor([0, 3])
    inst.gt_masks = BitMasks(masks)
    return inst


def _image(seed, h=64, w=64):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), generator=g).float()


def test_head_shapes(model):
    head = model.roi_heads.mask_head
    coarse, inc, _ = head.layers(torch.randn(5, 16, 7, 7))
    assert coarse.shape == (5, 4, 14, 14) and inc.shape == (5, 1, 14, 14)
    q = inc.sigmoid()
    assert q.min() >= 0 and q.max() <= 1


def test_training_step_gives_finite_losses_and_gradients(model):
    model.train()
    batch = [{"image": _image(i), "instances": _gt_instances()} for i in range(2)]
    with EventStorage(0):
        losses = model(batch)
    model.eval()
    expected = {"loss_mask", "loss_mask_uncertain", "loss_mask_refine", "loss_semantic",
                "loss_bound", "loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}
    assert set(losses) == expected
    assert all(torch.isfinite(v) for v in losses.values())
    model.zero_grad()
    sum(losses.values()).backward()
    head = model.roi_heads.mask_head
    assert head.encoder.conv_fuse.weight.grad.abs().sum() > 0
    assert head.predictor_uncertain.weight.grad.abs().sum() > 0
    assert model.roi_heads.mask_pooler.conv_norm_relus_semantic[0].weight.grad.abs().sum() > 0
    model.zero_grad()


def test_zero_foreground_rois_give_zero_mask_losses_with_gradients(model):
    model.train()
    images = torch.stack([_image(0)])
    features = model.backbone((images - model.pixel_mean) / model.pixel_std)
    proposals = Instances((64, 64))
    proposals.proposal_boxes = Boxes(torch.tensor([[0.0, 0.0, 20.0, 20.0]] * 3))
    proposals.gt_classes = torch.full((3,), 4)  # background
    proposals.gt_masks = BitMasks(torch.zeros(3, 64, 64, dtype=torch.bool))
    losses = model.roi_heads._forward_mask(features, [proposals])
    model.eval()
    for k in ("loss_mask", "loss_mask_uncertain", "loss_mask_refine", "loss_bound"):
        assert losses[k].item() == 0.0, k
    sum(losses.values()).backward()  # the semantic loss still trains the P2 refiner
    assert model.roi_heads.mask_pooler.conv_norm_relus_semantic[0].weight.grad is not None
    model.zero_grad()


@torch.no_grad()
def test_an_images_masks_are_the_same_alone_or_batched(model):
    model.eval()
    a = {"image": _image(1), "height": 64, "width": 64}
    b = {"image": _image(2), "height": 64, "width": 64}
    (alone,) = model([a])
    batched, _ = model([a, b])
    x, y = alone["instances"], batched["instances"]
    assert len(x) == 5
    torch.testing.assert_close(x.pred_boxes.tensor, y.pred_boxes.tensor, atol=1e-4, rtol=1e-4)
    assert torch.equal(x.pred_masks, y.pred_masks)


@torch.no_grad()
def test_refined_masks_differ_from_upsampled_coarse_masks_only_for_the_top_rois(model):
    model.eval()
    inputs = [{"image": _image(3), "height": 64, "width": 64}]
    refined = model(inputs)[0]["instances"].pred_masks
    model.roi_heads.max_refine_rois_test = 0
    try:
        coarse = model(inputs)[0]["instances"].pred_masks
    finally:
        model.roi_heads.max_refine_rois_test = 3
    assert refined.shape == coarse.shape == (5, 64, 64)
    assert torch.equal(refined[3:], coarse[3:])


def test_the_predictor_runs_a_transfiner_model(model):
    predictor = Predictor(model=model, resize=T.ResizeShortestEdge([64, 64], 96),
                          input_format="RGB", batch_size=2)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (80, 100, 3), dtype=np.uint8),
              rng.integers(0, 255, (64, 70, 3), dtype=np.uint8)]
    first, second = predictor(images)
    assert first["instances"].pred_masks.shape[-2:] == (80, 100)
    assert second["instances"].pred_masks.shape[-2:] == (64, 70)
    assert len(first["instances"]) == 5


def test_binomial_blur_by_hand():
    from mask2former.models.transfiner.mask_head import blur_binomial

    ones = blur_binomial(torch.ones(1, 1, 15, 15))
    assert ones[0, 0, 7, 7].item() == pytest.approx(1.0)  # normalised kernel
    # zero padding: a corner keeps the kernel's lower-right quarter, (1+6+15+20)^2 / 64^2
    assert ones[0, 0, 0, 0].item() == pytest.approx((42 / 64) ** 2)
    impulse = torch.zeros(1, 1, 7, 7)
    impulse[0, 0, 3, 3] = 1.0
    row = torch.tensor([1.0, 6, 15, 20, 15, 6, 1]) / 64
    torch.testing.assert_close(blur_binomial(impulse)[0, 0], torch.outer(row, row))


@torch.no_grad()
def test_dilate_and_blur_switch(model):
    model.eval()
    head = model.roi_heads.mask_head
    inputs = [{"image": _image(4), "height": 64, "width": 64}]
    plain = model(inputs)[0]["instances"].pred_masks
    head.dilate_and_blur = True
    try:
        blurred = model(inputs)[0]["instances"].pred_masks
    finally:
        head.dilate_and_blur = False
    assert blurred.shape == plain.shape and not torch.equal(blurred[:3], plain[:3])
    assert torch.equal(blurred[3:], plain[3:])  # only refined RoIs are post-processed
