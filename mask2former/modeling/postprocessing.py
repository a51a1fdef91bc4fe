"""Inference post-processing of mask-classification predictions (one image at a time).

Pure functions of one image's last decoder prediction, already resized to the output size:
``mask_cls`` (Q, K+1) class logits, the last class being "no object", and ``mask_pred``
(Q, H, W) mask logits. They live outside the model's training ``forward`` path so that other
meta-architectures (FastInst, MP-Former) and export wrappers can reuse them.
"""

from collections.abc import Collection

import torch
from detectron2.structures import BitMasks, Boxes, Instances
from torch.nn import functional as F

__all__ = ["semantic_inference", "panoptic_inference", "instance_inference"]


def semantic_inference(mask_cls: torch.Tensor, mask_pred: torch.Tensor) -> torch.Tensor:
    """Per-pixel class scores: sum over queries of class probability times mask probability.

    Args:
        mask_cls: (Q, K+1) class logits.
        mask_pred: (Q, H, W) mask logits.

    Returns:
        (K, H, W) scores (not normalised; "no object" is dropped).
    """
    cls_prob = F.softmax(mask_cls, dim=-1)[:, :-1]  # (Q, K)
    mask_prob = mask_pred.sigmoid()  # (Q, H, W)
    return torch.einsum("qc,qhw->chw", cls_prob, mask_prob)  # (K, H, W)


def panoptic_inference(
    mask_cls: torch.Tensor,
    mask_pred: torch.Tensor,
    *,
    num_classes: int,
    object_mask_threshold: float,
    overlap_threshold: float,
    thing_ids: Collection[int],
) -> tuple[torch.Tensor, list[dict]]:
    """Panoptic segmentation by per-pixel argmax over confident queries.

    A query is kept when its top class over all K+1 classes is a real class and its score
    exceeds ``object_mask_threshold``. Every pixel goes to the kept query with the largest
    ``score * sigmoid(mask)``. A kept query becomes a segment when the pixels it wins, its own
    foreground (sigmoid >= 0.5), and their intersection are all non-empty, and the won area is
    at least ``overlap_threshold`` of its foreground. Segments of the same stuff class are
    merged into the first one.

    Args:
        mask_cls: (Q, K+1) class logits.
        mask_pred: (Q, H, W) mask logits.
        num_classes: K.
        object_mask_threshold: minimum class score of a kept query.
        overlap_threshold: minimum fraction of a query's foreground it must win.
        thing_ids: contiguous ids of the "thing" classes (the others are stuff).

    Returns:
        panoptic_seg: (H, W) int32 segment ids; 0 is void, segments are numbered from 1.
        segments_info: one dict per segment with "id", "isthing", "category_id" (contiguous).
    """
    scores, labels = F.softmax(mask_cls, dim=-1).max(-1)  # (Q,), (Q,)
    mask_prob = mask_pred.sigmoid()  # (Q, H, W)
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)
    cur_scores = scores[keep]  # (Q',)
    cur_classes = labels[keep]  # (Q',)
    cur_masks = mask_prob[keep]  # (Q', H, W)

    h, w = mask_pred.shape[-2:]
    panoptic_seg = torch.zeros((h, w), dtype=torch.int32, device=mask_pred.device)
    segments_info: list[dict] = []
    if cur_masks.shape[0] == 0:
        return panoptic_seg, segments_info

    thing_ids = set(int(i) for i in thing_ids)
    cur_prob_masks = cur_scores.view(-1, 1, 1) * cur_masks  # (Q', H, W)
    cur_mask_ids = cur_prob_masks.argmax(0)  # (H, W) index into the kept queries
    stuff_segment_ids: dict[int, int] = {}
    current_segment_id = 0
    for k, pred_class in enumerate(cur_classes.tolist()):
        isthing = pred_class in thing_ids
        won = cur_mask_ids == k  # (H, W)
        foreground = cur_masks[k] >= 0.5  # (H, W)
        mask = won & foreground  # (H, W)
        mask_area = int(won.sum())
        original_area = int(foreground.sum())
        if mask_area == 0 or original_area == 0 or not bool(mask.any()):
            continue
        if mask_area / original_area < overlap_threshold:
            continue
        if not isthing and pred_class in stuff_segment_ids:
            panoptic_seg[mask] = stuff_segment_ids[pred_class]
            continue
        current_segment_id += 1
        if not isthing:
            stuff_segment_ids[pred_class] = current_segment_id
        panoptic_seg[mask] = current_segment_id
        segments_info.append(
            {"id": current_segment_id, "isthing": isthing, "category_id": int(pred_class)}
        )
    return panoptic_seg, segments_info


def instance_inference(
    mask_cls: torch.Tensor,
    mask_pred: torch.Tensor,
    *,
    num_classes: int,
    test_topk_per_image: int,
    thing_ids: Collection[int] | None,
    image_size: tuple[int, int],
) -> Instances:
    """Instance segmentation: the top-k (query, class) pairs over the K real classes.

    Every query may yield several detections (one per class). The score of a detection is its
    class probability times the mean mask probability inside its binary mask (logit > 0).

    Unlike the official code, whose boxes are all zeros, ``pred_boxes`` are the tight boxes of
    the binary masks (``BitMasks.get_bounding_boxes``; empty masks give zero boxes). They make
    box AP meaningful; it stays a by-product of the masks, not a box prediction.

    Args:
        mask_cls: (Q, K+1) class logits.
        mask_pred: (Q, H, W) mask logits.
        num_classes: K.
        test_topk_per_image: number of detections kept (at most Q*K).
        thing_ids: when given (panoptic model), detections of other classes are dropped.
        image_size: (H, W) of the returned Instances.

    Returns:
        Instances with pred_masks (N, H, W) float 0/1, pred_boxes, scores (N,), pred_classes (N,).
    """
    scores = F.softmax(mask_cls, dim=-1)[:, :-1]  # (Q, K)
    k = min(test_topk_per_image, scores.numel())
    scores_per_image, topk_indices = scores.flatten().topk(k, sorted=False)  # (k,), (k,)
    labels_per_image = topk_indices % num_classes  # (k,)
    query_indices = topk_indices // num_classes  # (k,)

    if thing_ids is not None:
        things = torch.as_tensor(sorted(int(i) for i in thing_ids), dtype=torch.long)
        keep = torch.isin(labels_per_image, things.to(labels_per_image.device))  # (k,)
        scores_per_image = scores_per_image[keep]
        labels_per_image = labels_per_image[keep]
        query_indices = query_indices[keep]
    mask_pred = mask_pred[query_indices]  # (N, H, W)

    result = Instances(image_size)
    binary = mask_pred > 0  # (N, H, W)
    result.pred_masks = binary.float()
    result.pred_boxes = Boxes(BitMasks(binary).get_bounding_boxes().tensor.to(mask_pred.device))
    # Mean foreground probability inside each binary mask.
    mask_scores = (mask_pred.sigmoid() * result.pred_masks).flatten(1).sum(1) / (
        result.pred_masks.flatten(1).sum(1) + 1e-6
    )  # (N,)
    result.scores = scores_per_image * mask_scores
    result.pred_classes = labels_per_image
    return result
