"""Dual-path decoder: attention masks, auxiliary queries, head shapes, GT-mask-guided pass."""

from pathlib import Path

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_sem_seg_head

from mask2former.config import load_config
from mask2former.models.fastinst.criterion import FastInstMatcher
from mask2former.models.fastinst.decoder import gt_attn_mask, prediction_attn_mask

HEADS = 2
SYNTHETIC = str(
    Path(__file__).resolve().parents[3]
    / "configs/synthetic/instance-segmentation/fastinst_R18_synthetic.yaml"
)


def test_prediction_mask_blocks_negative_logits_and_never_the_aux_queries():
    logits = torch.tensor([[[[1.0, -1.0], [-2.0, 0.0]],  # query 0: blocked at 2 pixels
                            [[-1.0, -1.0], [-1.0, -1.0]]]])  # query 1: blocked everywhere
    mask = prediction_attn_mask(logits, num_aux_queries=3, num_heads=HEADS)  # (1*2, 5, 4)
    assert mask.shape == (HEADS, 5, 4) and mask.dtype == torch.bool
    for head in range(HEADS):
        assert mask[head, 0].tolist() == [False, True, True, False]  # logit 0 is allowed
        assert not mask[head, 1].any()  # fully blocked row -> unblocked
        assert not mask[head, 2:].any()  # auxiliary rows never blocked


def test_prediction_mask_rows_follow_image_then_head():
    logits = torch.stack([torch.full((1, 1, 2), -1.0), torch.full((1, 1, 2), 1.0)])
    logits[0, 0, 0, 0] = 1.0  # image 0 blocks pixel 1 only
    mask = prediction_attn_mask(logits, num_aux_queries=0, num_heads=HEADS)  # (2*2, 1, 2)
    assert mask[:, 0].tolist() == [[False, True]] * HEADS + [[False, False]] * HEADS


def test_gt_mask_is_the_complement_of_the_matched_ground_truth():
    gt = torch.zeros(2, 8, 8)
    gt[0, :4, :4] = 1  # top-left quarter
    gt[1] = 1  # the whole image
    targets = [{"labels": torch.tensor([0, 1]), "masks": gt}]
    indices = [(torch.tensor([3, 1]), torch.tensor([0, 1]))]
    mask = gt_attn_mask(targets, indices, num_queries=6, size=(4, 4), num_heads=HEADS)
    assert mask.shape == (HEADS, 6, 16)
    expected = torch.ones(4, 4, dtype=torch.bool)
    expected[:2, :2] = False
    assert torch.equal(mask[0, 3], expected.flatten())
    assert not mask[0, 1].any()  # the whole image is allowed
    assert not mask[:, [0, 2, 4, 5]].any()  # unmatched and auxiliary queries: no blocking
    assert torch.equal(mask[0], mask[1])


def test_gt_mask_unblocks_a_ground_truth_too_small_to_survive_resizing():
    gt = torch.zeros(1, 8, 8)
    gt[0, 1, 1] = 1  # vanishes at 4 x 4 with nearest resizing
    mask = gt_attn_mask([{"labels": torch.tensor([0]), "masks": gt}],
                        [(torch.tensor([0]), torch.tensor([0]))], 2, (4, 4), 1)
    assert not mask.any()


def test_blocked_pixels_get_zero_attention_weight():
    torch.manual_seed(0)
    attn = torch.nn.MultiheadAttention(8, HEADS)
    logits = torch.randn(1, 3, 2, 3)
    mask = prediction_attn_mask(logits, num_aux_queries=1, num_heads=HEADS)  # (2, 4, 6)
    queries, pixels = torch.randn(4, 1, 8), torch.randn(6, 1, 8)
    _, weights = attn(queries, pixels, pixels, attn_mask=mask, average_attn_weights=False)
    assert (weights[0][mask] == 0).all()
    assert (weights[0, :, 3] > 0).all()  # the auxiliary query sees every pixel


# ---------------------------------------------------------------------------- the head


def head_and_features(num_classes=3, dec_layers=3, size=128, num_queries=20):
    cfg = load_config(SYNTHETIC, [
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(num_classes),
        "MODEL.FASTINST.NUM_OBJECT_QUERIES", str(num_queries),
        "MODEL.FASTINST.DEC_LAYERS", str(dec_layers),
        "MODEL.FASTINST.TRAIN_NUM_POINTS", "256",
    ])
    shapes = {"res3": ShapeSpec(channels=128, stride=8), "res4": ShapeSpec(channels=256, stride=16),
              "res5": ShapeSpec(channels=512, stride=32)}
    torch.manual_seed(0)
    head = build_sem_seg_head(cfg, shapes)
    features = {name: torch.randn(2, s.channels, size // s.stride, size // s.stride)
                for name, s in shapes.items()}
    matcher = FastInstMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=256)
    return head, features, matcher


def targets(size=128):
    """Image 0: two boxes (classes 0 and 2); image 1: the first box (class 1)."""
    masks = torch.zeros(2, size, size)
    masks[0, size // 10 : size // 2, size // 8 : size // 3] = 1
    masks[1, size // 2 : size - 4, size // 3 : size - 8] = 1
    return [{"labels": torch.tensor([0, 2]), "masks": masks},
            {"labels": torch.tensor([1]), "masks": masks[:1]}]


def test_head_shapes_in_training_and_eval():
    """D3, 256 x 256 input, K = 3, 100 queries (spec, section 12)."""
    head, features, matcher = head_and_features(size=256, num_queries=100)
    out = head.train()(features, targets=targets(256), matcher=matcher)
    assert out["pred_logits"].shape == (2, 100, 4)
    assert out["pred_masks"].shape == (2, 100, 32, 32)
    assert out["proposal_cls_logits"].shape == (2, 4, 16, 16)
    assert len(out["aux_outputs"]) == 6  # 3 guided + initial + 2 intermediate
    locations = out["query_locations"]
    assert locations.shape == (2, 100, 2) and (locations > 0).all() and (locations < 1).all()
    with torch.no_grad():
        out = head.eval()(features)
    assert "aux_outputs" not in out and out["pred_logits"].shape == (2, 100, 4)


def test_guided_outputs_reuse_the_last_layer_matching():
    head, features, matcher = head_and_features()
    out = head.train()(features, targets=targets(), matcher=matcher)
    indices = out["pred_matching_indices"]
    assert [len(i) for i, _ in indices] == [2, 1]
    guided, normal = out["aux_outputs"][:3], out["aux_outputs"][3:]
    assert all(g["pred_matching_indices"] is indices for g in guided)
    assert all(n["pred_matching_indices"] is None for n in normal)


@pytest.mark.parametrize("dec_layers", [1, 3])
def test_guided_learning_changes_training_only(dec_layers):
    head, features, matcher = head_and_features(dec_layers=dec_layers)
    head.eval()
    with torch.no_grad():
        plain = head(features)
        guided = head(features, targets=targets(), matcher=matcher)
    for key in ("pred_logits", "pred_masks", "proposal_cls_logits"):
        assert torch.equal(plain[key], guided[key])
    head.train()  # the normal-path predictions of training do not depend on the guided pass
    with_guided = head(features, targets=targets(), matcher=matcher)
    without = head(features)
    assert len(without["aux_outputs"]) == dec_layers  # no guided predictions
    assert torch.equal(with_guided["pred_masks"], without["pred_masks"])
    for a, b in zip(with_guided["aux_outputs"][dec_layers:], without["aux_outputs"]):
        assert torch.equal(a["pred_logits"], b["pred_logits"])
