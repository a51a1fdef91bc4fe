"""The post-processing (areas counted in one pass, masks computed once per query, only the
queries a task keeps resized) against straightforward reference computations: per query,
per detection, every query resized."""

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import BitMasks

from mask2former.modeling.inference import PostProcessor
from mask2former.modeling.postprocessing import (
    instance_inference,
    panoptic_inference,
    semantic_inference,
)

K = 5  # classes 0, 1 things; 2, 3, 4 stuff
THINGS = [0, 1]


def reference_semantic(mask_cls, mask_pred):
    return torch.einsum("qc,qhw->chw", F.softmax(mask_cls, -1)[:, :-1], mask_pred.sigmoid())


def reference_panoptic(mask_cls, mask_pred, threshold, overlap):
    """One query at a time, in query order, as the paper's code does."""
    scores, labels = F.softmax(mask_cls, -1).max(-1)
    prob = mask_pred.sigmoid()
    keep = labels.ne(K) & (scores > threshold)
    cur_scores, cur_classes, cur_masks = scores[keep], labels[keep], prob[keep]
    seg = torch.zeros(mask_pred.shape[-2:], dtype=torch.int32)
    info, stuff, current = [], {}, 0
    if cur_masks.shape[0] == 0:
        return seg, info
    ids = (cur_scores.view(-1, 1, 1) * cur_masks).argmax(0)
    for k in range(cur_classes.shape[0]):
        c = int(cur_classes[k])
        isthing = c in THINGS
        mask_area = int((ids == k).sum())
        original_area = int((cur_masks[k] >= 0.5).sum())
        mask = (ids == k) & (cur_masks[k] >= 0.5)
        if mask_area > 0 and original_area > 0 and int(mask.sum()) > 0:
            if mask_area / original_area < overlap:
                continue
            if not isthing:
                if c in stuff:
                    seg[mask] = stuff[c]
                    continue
                stuff[c] = current + 1
            current += 1
            seg[mask] = current
            info.append({"id": current, "isthing": isthing, "category_id": c})
    return seg, info


def reference_instance(mask_cls, mask_pred, topk, thing_ids):
    """One detection at a time: (score, class, mask, box) tuples sorted by score."""
    scores = F.softmax(mask_cls, -1)[:, :-1]
    values, indices = scores.flatten().topk(min(topk, scores.numel()))
    out = []
    for v, i in zip(values.tolist(), indices.tolist()):
        q, c = divmod(i, K)
        if thing_ids is not None and c not in thing_ids:
            continue
        binary = mask_pred[q] > 0
        mean = float((mask_pred[q].sigmoid() * binary).sum() / (binary.sum() + 1e-6))
        box = BitMasks(binary[None]).get_bounding_boxes().tensor[0]
        out.append((v * mean, c, binary, box))
    return sorted(out, key=lambda d: -d[0])


def random_case(seed, q=12, h=24, w=20, confident=6):
    """Class logits with ``confident`` queries above 0.8 (some sharing a stuff class, one
    query winning two classes' top-k slots) and smooth overlapping masks."""
    gen = torch.Generator().manual_seed(seed)
    mask_cls = torch.randn(q, K + 1, generator=gen)
    for i in range(confident):
        mask_cls[i, [0, 1, 2, 2, 3, 4][i % 6]] += 8.0
    mask_cls[q - 1, :2] += 3.0  # two close thing classes: the same query twice in the top-k
    low = torch.randn(1, q, h // 4, w // 4, generator=gen) * 4 - 2
    mask_pred = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)[0]
    for i in range(q):  # each query mostly covers its own random box
        y, x = torch.randint(0, h // 2, (1,), generator=gen), torch.randint(0, w // 2, (1,))
        mask_pred[i, y : y + h // 2, x : x + w // 2] += 6.0
    return mask_cls, mask_pred


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_semantic_matches_reference_and_shared_probabilities(seed):
    mask_cls, mask_pred = random_case(seed)
    expected = reference_semantic(mask_cls, mask_pred)
    torch.testing.assert_close(semantic_inference(mask_cls, mask_pred), expected)
    shared = semantic_inference(mask_cls, mask_pred, mask_prob=mask_pred.sigmoid())
    torch.testing.assert_close(shared, expected)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("overlap", [0.0, 0.5, 0.8])
def test_panoptic_matches_per_query_reference(seed, overlap):
    mask_cls, mask_pred = random_case(seed)
    seg_ref, info_ref = reference_panoptic(mask_cls, mask_pred, 0.8, overlap)
    if overlap < 0.8:
        assert info_ref, "the case must keep segments"
    for mask_prob in (None, mask_pred.sigmoid()):
        seg, info = panoptic_inference(
            mask_cls,
            mask_pred,
            num_classes=K,
            object_mask_threshold=0.8,
            overlap_threshold=overlap,
            thing_ids=THINGS,
            mask_prob=mask_prob,
        )
        assert info == info_ref
        assert seg.dtype == torch.int32
        assert torch.equal(seg, seg_ref)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("thing_ids", [None, THINGS])
@pytest.mark.parametrize("topk", [3, 10, 100])
def test_instance_matches_per_detection_reference(seed, thing_ids, topk):
    mask_cls, mask_pred = random_case(seed)
    expected = reference_instance(mask_cls, mask_pred, topk, thing_ids)
    for mask_prob in (None, mask_pred.sigmoid()):
        inst = instance_inference(
            mask_cls,
            mask_pred,
            num_classes=K,
            test_topk_per_image=topk,
            thing_ids=thing_ids,
            image_size=tuple(mask_pred.shape[-2:]),
            mask_prob=mask_prob,
        )
        assert len(inst) == len(expected)
        assert inst.pred_masks.dtype == torch.float32
        order = inst.scores.argsort(descending=True, stable=True)
        for i, (score, c, binary, box) in zip(order.tolist(), expected):
            assert float(inst.scores[i]) == pytest.approx(score, abs=1e-6)
            assert int(inst.pred_classes[i]) == c
            assert torch.equal(inst.pred_masks[i], binary.float())
            assert torch.equal(inst.pred_boxes.tensor[i], box)


def _postprocessor(tasks):
    return PostProcessor(
        num_classes=K,
        tasks=tasks,
        object_mask_threshold=0.8,
        overlap_threshold=0.5,
        test_topk_per_image=8,
        thing_ids=THINGS,
    )


@pytest.mark.parametrize(
    "tasks",
    [("panoptic",), ("instance",), ("panoptic", "instance"), ("semantic", "panoptic", "instance")],
)
def test_postprocessor_resizes_only_needed_queries_with_same_results(tasks):
    """Every query resized (detectron2's sem_seg_postprocess) then each task's reference, vs
    the post-processor (which resizes the needed queries only, semantic off)."""
    mask_cls, low = random_case(4, h=12, w=16)
    mask_cls[7, 3] += 4.0  # stuff, not panoptic-confident, in the top-k: dropped as not a thing
    padded, image, output = (24, 32), (22, 29), (33, 40)
    post = _postprocessor(tasks)
    if "semantic" not in tasks:
        needed = post.queries_needed(mask_cls)
        assert needed is not None and needed.numel() < mask_cls.shape[0]
    (result,) = post(
        mask_cls[None], low[None], padded_size=padded, image_sizes=[image], output_sizes=[output]
    )
    full = F.interpolate(low[None], size=padded, mode="bilinear", align_corners=False)[0]
    full = sem_seg_postprocess(full, image, *output)  # (Q, 33, 40)
    if "panoptic" in tasks:
        seg_ref, info_ref = reference_panoptic(mask_cls, full, 0.8, 0.5)
        assert info_ref and result["panoptic_seg"][1] == info_ref
        assert torch.equal(result["panoptic_seg"][0], seg_ref)
    if "instance" in tasks:
        things = THINGS if "panoptic" in tasks else None
        expected = reference_instance(mask_cls, full, 8, things)
        got = sorted(result["instances"].scores.tolist(), reverse=True)
        assert got == pytest.approx([d[0] for d in expected], abs=1e-5)
    if "semantic" in tasks:
        torch.testing.assert_close(result["sem_seg"], reference_semantic(mask_cls, full))


def test_resize_masks_same_size_skips_resampling_and_matches_detectron2():
    _, low = random_case(5, h=12, w=16)
    for image, output in [((48, 64), (48, 64)), ((40, 60), (40, 60)), ((40, 60), (50, 70))]:
        got = PostProcessor.resize_masks(low, (48, 64), image, output)
        full = F.interpolate(low[None], size=(48, 64), mode="bilinear", align_corners=False)[0]
        torch.testing.assert_close(got, sem_seg_postprocess(full, image, *output))
        assert got.is_contiguous()
