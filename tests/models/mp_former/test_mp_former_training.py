"""MP-Former's losses, full-model training and configs (tiny sizes, CPU)."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.projects.point_rend.point_features import (
    get_uncertain_point_coords_with_randomness,
    point_sample,
)
from detectron2.structures import Instances

from mask2former import add_maskformer2_config
from mask2former.modeling.criterion import SetCriterion, calculate_uncertainty
from mask2former.modeling.matcher import HungarianMatcher
from mask2former.models.mp_former import MaskPilotingLoss, mp_loss_names

B, K, C, HEADS = 2, 3, 16, 4
MASK_HW = (10, 12)  # 1/4 of the input
INPUT_HW = (40, 48)  # padded input size of the GT masks
CONFIG_ROOT = Path(__file__).resolve().parents[3] / "configs"


def box_mask(y0, y1, x0, x1):
    mask = torch.zeros(INPUT_HW, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return mask


# ---------------------------------------------------------------------------- (3) losses


def make_criterion(num_points=64):
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=num_points)
    return SetCriterion(
        num_classes=K,
        matcher=matcher,
        weight_dict={},
        eos_coef=0.1,
        losses=["labels", "masks"],
        num_points=num_points,
        oversample_ratio=3.0,
        importance_sample_ratio=0.75,
    )


def swapped_case(num_groups=1):
    """Image 0: 2 objects, each MP slot predicts the *other* object (Hungarian would swap);
    image 1: 1 object, so slot 1 of each group is padding."""
    left, right = box_mask(0, 40, 0, 24), box_mask(0, 40, 24, 48)
    targets = [
        {"labels": torch.tensor([0, 1]), "masks": torch.stack([left, right])},
        {"labels": torch.tensor([2]), "masks": left[None]},
    ]
    m, p = 2, 2 * num_groups
    logits = torch.full((B, p, K + 1), -4.0)
    masks = torch.zeros(B, p, *MASK_HW)
    right_small = F.interpolate(right[None, None].float(), size=MASK_HW)[0, 0]
    left_small = 1 - right_small
    for g in range(num_groups):
        logits[0, g * m, 1] = logits[0, g * m + 1, 0] = 4.0  # swapped classes
        masks[0, g * m] = 8 * right_small - 4  # slot for object 0 predicts object 1
        masks[0, g * m + 1] = 8 * left_small - 4
        logits[1, g * m, 2] = 4.0
        masks[1, g * m] = 8 * left_small - 4
    slots0 = torch.tensor([g * m + j for g in range(num_groups) for j in range(2)])
    slots1 = torch.tensor([g * m for g in range(num_groups)])
    indices = [(slots0, torch.tensor([0, 1] * num_groups)), (slots1, torch.zeros_like(slots1))]
    outputs = {"pred_logits": logits, "pred_masks": masks, "aux_outputs": [],
               "indices": indices, "num_groups": num_groups}
    return outputs, targets


@pytest.mark.parametrize("num_groups", [1, 2])
def test_mp_losses_use_the_fixed_assignment(num_groups):
    criterion = make_criterion()
    outputs, targets = swapped_case(num_groups)
    hungarian = criterion.matcher(outputs, targets)
    assert not torch.equal(hungarian[0][1][torch.argsort(hungarian[0][0])][:2],
                           outputs["indices"][0][1][:2])  # Hungarian would pick differently

    names = mp_loss_names(["loss_ce", "loss_mask", "loss_dice"], 0, True)
    loss = MaskPilotingLoss(weight_dict=dict.fromkeys(names, 1.0))
    torch.manual_seed(0)
    losses = loss(criterion, outputs, targets)
    assert set(losses) == {"loss_ce_mp", "loss_mask_mp", "loss_dice_mp"}

    # Class loss by hand: true labels at the fixed slots, padding slots -> no object (K).
    m = 2
    target_classes = torch.full((B, num_groups * m), K)
    for g in range(num_groups):
        target_classes[0, g * m], target_classes[0, g * m + 1] = 0, 1
        target_classes[1, g * m] = 2
    weight = torch.ones(K + 1)
    weight[K] = 0.1
    expected_ce = F.cross_entropy(outputs["pred_logits"].transpose(1, 2), target_classes, weight)
    torch.testing.assert_close(losses["loss_ce_mp"], expected_ce)

    # Mask BCE by hand at the same random points (the class loss draws no random numbers).
    slots = [(0, g * m + j, j) for g in range(num_groups) for j in range(2)]
    slots += [(1, g * m, 0) for g in range(num_groups)]
    src = torch.stack([outputs["pred_masks"][b, s] for b, s, _ in slots])[:, None]  # (N, 1, h, w)
    tgt = torch.stack([targets[b]["masks"][j] for b, _, j in slots])[:, None].float()
    torch.manual_seed(0)
    coords = get_uncertain_point_coords_with_randomness(
        src, calculate_uncertainty, 64, 3.0, 0.75
    )  # (N, 64, 2)
    point_logits = point_sample(src, coords, align_corners=False)[:, 0]  # (N, 64)
    point_labels = point_sample(tgt, coords, align_corners=False)[:, 0]
    num_masks = 3 * num_groups  # N GTs times G groups
    bce = F.binary_cross_entropy_with_logits(point_logits, point_labels, reduction="none")
    torch.testing.assert_close(losses["loss_mask_mp"], bce.mean(1).sum() / num_masks)
    # The predictions are right for the fixed assignment only on image 1, wrong on image 0.
    assert losses["loss_mask_mp"] > 1.0


def test_class_loss_off_and_skipped_batch():
    names = mp_loss_names(["loss_ce", "loss_mask", "loss_dice"], 2, class_loss=False)
    assert names == ["loss_mask_mp", "loss_dice_mp", "loss_mask_mp_0", "loss_dice_mp_0",
                     "loss_mask_mp_1", "loss_dice_mp_1"]
    criterion = make_criterion()
    outputs, targets = swapped_case()
    outputs["aux_outputs"] = [dict(outputs), dict(outputs)]
    loss = MaskPilotingLoss(weight_dict=dict.fromkeys(names, 1.0), class_loss=False)
    losses = loss(criterion, outputs, targets)
    assert set(losses) == set(names)
    # Without deep supervision only the final point is computed.
    final = mp_loss_names(["loss_ce", "loss_mask", "loss_dice"], 0, class_loss=True)
    final_loss = MaskPilotingLoss(weight_dict=dict.fromkeys(final, 1.0))
    assert set(final_loss(criterion, outputs, targets)) == set(final)

    weight = torch.ones(K, C, requires_grad=True)
    skipped = {"skipped": True, "zero": weight.sum() * 0.0}
    empty = [{"labels": torch.zeros(0, dtype=torch.int64),
              "masks": torch.zeros(0, *INPUT_HW)}] * 2
    losses = MaskPilotingLoss(weight_dict=dict.fromkeys(names, 1.0))(criterion, skipped, empty)
    assert set(losses) == set(names) and all(v.item() == 0 for v in losses.values())
    sum(losses.values()).backward()
    assert weight.grad is not None and not weight.grad.any()


# ---------------------------------------------------------------------------- (5, 6) model


def model_cfg(mp=True, dec_layers=3, **mp_keys):
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
    head.NUM_CLASSES, head.CONVS_DIM, head.MASK_DIM, head.NORM = K, 32, 32, "GN"
    head.TRANSFORMER_ENC_LAYERS = 1
    head.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = 4
    mf = cfg.MODEL.MASK_FORMER
    mf.TRANSFORMER_IN_FEATURE = "multi_scale_pixel_decoder"
    mf.HIDDEN_DIM, mf.NHEADS, mf.DIM_FEEDFORWARD, mf.DROPOUT = 32, HEADS, 64, 0.0
    mf.NUM_OBJECT_QUERIES, mf.DEC_LAYERS, mf.TRAIN_NUM_POINTS = 6, dec_layers, 64
    mf.CLASS_WEIGHT, mf.MASK_WEIGHT, mf.DICE_WEIGHT = 2.0, 5.0, 5.0
    mf.TEST.SEMANTIC_ON, mf.TEST.INSTANCE_ON, mf.TEST.PANOPTIC_ON = True, True, False
    cfg.MODEL.MP_FORMER.ENABLED = mp
    for key, value in mp_keys.items():  # QUERY_POS is a decoder key
        setattr(mf if key == "QUERY_POS" else cfg.MODEL.MP_FORMER, key, value)
    return cfg


def tiny_model(mp=True, dec_layers=3, **mp_keys):
    torch.manual_seed(0)
    return build_model(model_cfg(mp, dec_layers, **mp_keys))


def batch(counts, seed=0, size=64):
    gen = torch.Generator().manual_seed(seed)
    items = []
    for n in counts:
        inst = Instances((size, size))
        inst.gt_classes = torch.randint(0, K, (n,), generator=gen)
        inst.gt_masks = torch.rand(n, size, size, generator=gen) > 0.6
        image = torch.randint(0, 256, (3, size, size), generator=gen).float()
        items.append({"image": image, "instances": inst})
    return items


@pytest.mark.parametrize("counts", [(3, 0, 2), (0, 0)])
def test_model_training_with_empty_images(counts):
    model = tiny_model(NUM_GROUPS=2, MASK_NOISE_RATIO=0.2, PER_HEAD_NOISE=True).train()
    losses = model(batch(counts))
    assert set(losses) == set(model.criterion.weight_dict)
    assert len(losses) == 2 * 3 * 3  # (matching + MP) x (ce, mask, dice) x 3 points
    assert all(torch.isfinite(v) for v in losses.values())
    mp_losses = [v for k, v in losses.items() if "_mp" in k]
    if sum(counts) == 0:
        assert all(v.item() == 0 for v in mp_losses)
    else:
        assert all(v.item() > 0 for v in mp_losses)
    model.zero_grad()
    sum(losses.values()).backward()
    label_enc = model.sem_seg_head.predictor.variant.label_enc.weight
    assert label_enc.grad is not None and torch.isfinite(label_enc.grad).all()
    assert bool(label_enc.grad.any()) == (sum(counts) > 0)


@pytest.mark.parametrize("class_loss,expected", [(True, 60), (False, 50)])
def test_sixty_loss_terms(class_loss, expected):
    model = tiny_model(dec_layers=10, CLASS_LOSS=class_loss).train()
    losses = model(batch((2, 1)))
    assert len(losses) == expected
    weights = model.criterion.weight_dict
    assert weights["loss_ce_mp"] == 2.0 if class_loss else "loss_ce_mp" not in weights
    assert weights["loss_mask_mp_8"] == 5.0 and weights["loss_dice_mp"] == 5.0
    assert ("loss_ce_mp_0" in losses) == class_loss


def test_autocast_training():
    model = tiny_model().train()
    items = batch((2, 1))
    with torch.autocast(device_type=model.device.type, dtype=torch.bfloat16):
        losses = model(items)
    assert all(torch.isfinite(v) for v in losses.values())


def test_eval_inference_is_identical_with_mp():
    plain, piloted = tiny_model(mp=False).eval(), tiny_model(mp=True).eval()
    items = [{"image": x["image"]} for x in batch((1, 1), seed=3)]
    with torch.no_grad():
        a, b = plain(items), piloted(items)
    for ra, rb in zip(a, b, strict=True):
        assert torch.equal(ra["sem_seg"], rb["sem_seg"])
        assert torch.equal(ra["instances"].scores, rb["instances"].scores)
        assert torch.equal(ra["instances"].pred_masks, rb["instances"].pred_masks)


# ---------------------------------------------------------------------------- configs


def test_config_defaults_are_off():
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    mp = cfg.MODEL.MP_FORMER
    assert (mp.ENABLED, mp.NUM_GROUPS, mp.MASK_NOISE_RATIO, mp.PER_HEAD_NOISE) == (
        False, 1, 0.0, False)
    assert (mp.LABEL_NOISE_RATIO, mp.PILOT_ALL_LAYERS, mp.CLASS_LOSS) == (0.2, True, True)
    assert cfg.MODEL.MASK_FORMER.QUERY_POS == "learned"  # the official Mask2Former decoder


MP_CONFIGS = sorted(str(p.relative_to(CONFIG_ROOT)) for p in CONFIG_ROOT.rglob("mp_former/*.yaml"))


def test_every_published_setting_has_a_config():
    expected = {
        *(f"coco/instance-segmentation/mp_former/maskformer2_R50_bs16_{e}ep_mp.yaml"
          for e in (12, 24, 36, 50)),
        *(f"coco/panoptic-segmentation/mp_former/maskformer2_R50_bs16_{e}ep_mp.yaml"
          for e in (12, 36, 50)),
        "ade20k/semantic-segmentation/mp_former/maskformer2_R50_bs16_80k_mp.yaml",
        "ade20k/semantic-segmentation/mp_former/maskformer2_R50_bs16_160k_mp.yaml",
        "cityscapes/instance-segmentation/mp_former/maskformer2_R50_bs16_90k_mp.yaml",
        "cityscapes/semantic-segmentation/mp_former/maskformer2_R50_bs16_90k_mp.yaml",
    }
    assert expected <= set(MP_CONFIGS)
    assert any(c.startswith("synthetic/panoptic") for c in MP_CONFIGS)


@pytest.mark.parametrize("config", MP_CONFIGS)
def test_mp_configs_enable_the_released_recipe(config):
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    cfg.merge_from_file(str(CONFIG_ROOT / config))
    mp = cfg.MODEL.MP_FORMER
    assert mp.ENABLED and mp.NUM_GROUPS == 1 and mp.MASK_NOISE_RATIO == 0.0
    assert mp.LABEL_NOISE_RATIO == 0.2 and mp.PILOT_ALL_LAYERS and mp.CLASS_LOSS
    # The released code trains without query positions; *_learned_qpos.yaml keeps them.
    expected_pos = "learned" if config.endswith("_learned_qpos.yaml") else "none"
    assert cfg.MODEL.MASK_FORMER.QUERY_POS == expected_pos
    schedules = {"12ep": (88500, (73750, 81125)), "24ep": (177000, (162250, 169625)),
                 "36ep": (265500, (245000, 260000)), "50ep": (368750, (327778, 355092)),
                 "160k": (160000, (135000, 150000)), "80k": (80000, (67500, 75000)),
                 "90k": (90000, (80000, 85000))}
    for tag, (max_iter, steps) in schedules.items():
        if f"_{tag}_" in config:
            assert cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupMultiStepLR"
            assert (cfg.SOLVER.MAX_ITER, tuple(cfg.SOLVER.STEPS)) == (max_iter, steps)
