"""Inference post-processing of mask-classification predictions (one image at a time).

Pure functions of one image's last decoder prediction, already resized to the output size:
``mask_cls`` (Q, K+1) class logits, the last class being "no object", and ``mask_pred``
(Q, H, W) mask logits. They live outside the model's training ``forward`` path so that other
meta-architectures (FastInst, MP-Former) and export wrappers can reuse them.

Full-resolution work is what costs here (Q x H x W values per pass), so each function touches
at full resolution only the queries its task keeps: panoptic the confident ones, instance the
queries of its top-k detections (each once, however many classes it is selected with).
Which queries those are depends on the class logits alone (:func:`panoptic_keep`,
:func:`instance_topk`), so a caller can resize only them. When several tasks run on the same
masks, the caller may compute ``mask_prob = mask_pred.sigmoid()`` once and pass it to each.
"""

from collections.abc import Collection

import torch
from detectron2.structures import BitMasks, Boxes, Instances
from torch.nn import functional as F

# Result key of each task.
RESULT_KEYS = {"semantic": "sem_seg", "panoptic": "panoptic_seg", "instance": "instances"}

__all__ = [
    "RESULT_KEYS",
    "instance_detections",
    "instance_inference",
    "instance_result",
    "instance_topk",
    "panoptic_inference",
    "panoptic_keep",
    "panoptic_segments",
    "semantic_inference",
]


def semantic_inference(
    mask_cls: torch.Tensor, mask_pred: torch.Tensor, *, mask_prob: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-pixel class scores: sum over queries of class probability times mask probability.

    Args:
        mask_cls: (Q, K+1) class logits.
        mask_pred: (Q, H, W) mask logits.
        mask_prob: ``mask_pred.sigmoid()`` when the caller has it already (else computed).

    Returns:
        (K, H, W) scores (not normalised; "no object" is dropped).
    """
    cls_prob = F.softmax(mask_cls, dim=-1)[:, :-1]  # (Q, K)
    if mask_prob is None:
        mask_prob = mask_pred.sigmoid()  # (Q, H, W)
    q, h, w = mask_prob.shape
    # (K, Q) @ (Q, H*W) -> (K, H*W) -> (K, H, W): one matrix product
    return (cls_prob.t() @ mask_prob.reshape(q, h * w)).view(-1, h, w)


def panoptic_keep(
    mask_cls: torch.Tensor, *, num_classes: int, object_mask_threshold: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The queries panoptic inference keeps: top class over all K+1 a real class, with a score
    above ``object_mask_threshold``.

    Args:
        mask_cls: (Q, K+1) class logits.

    Returns:
        indices (Q',) int64 ascending, their scores (Q',) and classes (Q',).
    """
    scores, labels = F.softmax(mask_cls, dim=-1).max(-1)  # (Q,), (Q,)
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)
    indices = keep.nonzero().squeeze(1)  # (Q',)
    return indices, scores[indices], labels[indices]


def panoptic_inference(
    mask_cls: torch.Tensor,
    mask_pred: torch.Tensor,
    *,
    num_classes: int,
    object_mask_threshold: float,
    overlap_threshold: float,
    thing_ids: Collection[int],
    mask_prob: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[dict]]:
    """Panoptic segmentation by per-pixel argmax over confident queries.

    A query is kept when its top class over all K+1 classes is a real class and its score
    exceeds ``object_mask_threshold``. Every pixel goes to the kept query with the largest
    ``score * sigmoid(mask)``. A kept query becomes a segment when the pixels it wins, its own
    foreground (sigmoid >= 0.5), and their intersection are all non-empty, and the won area is
    at least ``overlap_threshold`` of its foreground. Segments of the same stuff class are
    merged into the first one. A pixel gets the segment of the query it goes to when it is in
    that query's foreground, else 0.

    The areas of all kept queries come from one pass over the pixels (counts per winning
    query) instead of one pass per query; the decisions are then made in query order.

    Args:
        mask_cls: (Q, K+1) class logits.
        mask_pred: (Q, H, W) mask logits.
        num_classes: K.
        object_mask_threshold: minimum class score of a kept query.
        overlap_threshold: minimum fraction of a query's foreground it must win.
        thing_ids: contiguous ids of the "thing" classes (the others are stuff).
        mask_prob: ``mask_pred.sigmoid()`` when the caller has it already (else computed for
            the kept queries only).

    Returns:
        panoptic_seg: (H, W) int32 segment ids; 0 is void, segments are numbered from 1.
        segments_info: one dict per segment with "id", "isthing", "category_id" (contiguous).
    """
    kept, cur_scores, cur_classes = panoptic_keep(
        mask_cls, num_classes=num_classes, object_mask_threshold=object_mask_threshold
    )
    h, w = mask_pred.shape[-2:]
    device = mask_pred.device
    n = kept.numel()
    if n == 0:
        return torch.zeros((h, w), dtype=torch.int32, device=device), []

    if mask_prob is None:
        cur_masks = mask_pred[kept].sigmoid()  # (Q', H, W)
    else:
        cur_masks = mask_prob[kept]  # (Q', H, W)
    winner = (cur_scores.view(-1, 1, 1) * cur_masks).argmax(0)  # (H, W) index into kept
    # The winner's own foreground at every pixel: (H, W) bool
    in_foreground = cur_masks.gather(0, winner[None])[0] >= 0.5
    won_area = torch.bincount(winner.flatten(), minlength=n)  # (Q',)
    foreground_area = (cur_masks >= 0.5).flatten(1).sum(1)  # (Q',)
    both_area = torch.bincount(winner[in_foreground], minlength=n)  # (Q',)

    segment_of, segments_info = panoptic_segments(
        cur_classes,
        won_area,
        foreground_area,
        both_area,
        overlap_threshold=overlap_threshold,
        thing_ids=thing_ids,
    )
    lookup = torch.tensor(segment_of, dtype=torch.int32, device=device)  # (Q',)
    panoptic_seg = torch.where(in_foreground, lookup[winner], 0).to(torch.int32)  # (H, W)
    return panoptic_seg, segments_info


def panoptic_segments(
    classes: torch.Tensor,
    won_area: torch.Tensor,
    foreground_area: torch.Tensor,
    both_area: torch.Tensor,
    *,
    overlap_threshold: float,
    thing_ids: Collection[int],
) -> tuple[list[int], list[dict]]:
    """Panoptic inference's decisions, in query order, from the kept queries' areas.

    Args:
        classes: (Q',) class of each kept query.
        won_area: (Q',) pixels each kept query wins.
        foreground_area: (Q',) pixels of its own foreground (sigmoid >= 0.5).
        both_area: (Q',) pixels it wins inside its own foreground.

    Returns:
        segment_of: per kept query, the segment id its pixels get (0: dropped).
        segments_info: one dict per segment with "id", "isthing", "category_id".
    """
    thing_ids = set(int(i) for i in thing_ids)
    segment_of = [0] * len(classes)
    segments_info: list[dict] = []
    stuff_segment_ids: dict[int, int] = {}
    current_segment_id = 0
    for k, (pred_class, mask_area, original_area, both) in enumerate(
        zip(classes.tolist(), won_area.tolist(), foreground_area.tolist(), both_area.tolist())
    ):
        isthing = pred_class in thing_ids
        if mask_area == 0 or original_area == 0 or both == 0:
            continue
        if mask_area / original_area < overlap_threshold:
            continue
        if not isthing and pred_class in stuff_segment_ids:
            segment_of[k] = stuff_segment_ids[pred_class]
            continue
        current_segment_id += 1
        if not isthing:
            stuff_segment_ids[pred_class] = current_segment_id
        segment_of[k] = current_segment_id
        segments_info.append(
            {"id": current_segment_id, "isthing": isthing, "category_id": int(pred_class)}
        )
    return segment_of, segments_info


def instance_topk(
    mask_cls: torch.Tensor,
    *,
    num_classes: int,
    test_topk_per_image: int,
    thing_ids: Collection[int] | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The detections instance inference keeps: the top-k (query, class) pairs over the K real
    classes by class probability, then (``thing_ids`` given) only thing classes.

    Args:
        mask_cls: (Q, K+1) class logits.

    Returns:
        class scores (N,), classes (N,) and query indices (N,) of the detections.
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
    return scores_per_image, labels_per_image, query_indices


def instance_inference(
    mask_cls: torch.Tensor,
    mask_pred: torch.Tensor,
    *,
    num_classes: int,
    test_topk_per_image: int,
    thing_ids: Collection[int] | None,
    image_size: tuple[int, int],
    mask_prob: torch.Tensor | None = None,
) -> Instances:
    """Instance segmentation: the top-k (query, class) pairs over the K real classes.

    Every query may yield several detections (one per class). The score of a detection is its
    class probability times the mean mask probability inside its binary mask (logit > 0).
    The binary mask, its box and its mean probability are computed once per selected query and
    shared by that query's detections.

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
        mask_prob: ``mask_pred.sigmoid()`` when the caller has it already (else computed for
            the selected queries only).

    Returns:
        Instances with pred_masks (N, H, W) float 0/1, pred_boxes, scores (N,), pred_classes (N,).
    """
    scores, labels, queries, which = instance_detections(
        mask_cls,
        num_classes=num_classes,
        test_topk_per_image=test_topk_per_image,
        thing_ids=thing_ids,
    )
    logits = _rows(mask_pred, queries)  # (U, H, W)
    binary = logits > 0  # (U, H, W)
    prob = logits.sigmoid() if mask_prob is None else _rows(mask_prob, queries)  # (U, H, W)
    masks = binary.float()  # (U, H, W) 0/1
    u, h, w = masks.shape
    area = masks.sum(2).double().sum(1)  # (U,): exact counts (each row's is below 2**24)
    # Mean foreground probability inside each binary mask: one dot product per query,
    # (U, 1, H*W) @ (U, H*W, 1), with no (U, H, W) temporary (0.7x the time of masking and
    # summing at 800x1216 on the CPU).
    inside = torch.bmm(prob.float().reshape(u, 1, h * w), masks.reshape(u, h * w, 1))  # (U,1,1)
    mask_scores = inside.view(-1) / (area.float() + 1e-6)  # (U,)
    boxes = BitMasks(binary).get_bounding_boxes().tensor.to(mask_pred.device)  # (U, 4)
    return instance_result(image_size, scores, labels, which, masks, boxes, mask_scores)


def instance_detections(
    mask_cls: torch.Tensor,
    *,
    num_classes: int,
    test_topk_per_image: int,
    thing_ids: Collection[int] | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`instance_topk`'s detections grouped by query (their order is arbitrary anyway:
    the top-k is unsorted), so that each query's mask is computed once.

    Returns:
        scores (N,), classes (N,), queries (U,) the distinct queries ascending, and which (N,)
        the position of each detection's query among them (0..U-1, non-decreasing).
    """
    scores, labels, query_indices = instance_topk(
        mask_cls,
        num_classes=num_classes,
        test_topk_per_image=test_topk_per_image,
        thing_ids=thing_ids,
    )
    order = torch.argsort(query_indices, stable=True)
    queries, counts = torch.unique_consecutive(query_indices[order], return_counts=True)
    which = torch.repeat_interleave(torch.arange(queries.numel(), device=counts.device), counts)
    return scores[order], labels[order], queries, which


def instance_result(
    image_size: tuple[int, int],
    scores: torch.Tensor,
    labels: torch.Tensor,
    which: torch.Tensor,
    masks: torch.Tensor,
    boxes: torch.Tensor,
    mask_scores: torch.Tensor,
) -> Instances:
    """The Instances of :func:`instance_detections`' detections from their queries' binary
    masks (U, H, W) float 0/1, boxes (U, 4) and mean mask probabilities (U,); a query with
    several detections has its mask repeated."""
    if masks.shape[0] != which.numel():
        masks, boxes, mask_scores = masks[which], boxes[which], mask_scores[which]
    result = Instances(image_size)
    result.pred_masks = masks  # (N, H, W)
    result.pred_boxes = Boxes(boxes)
    result.scores = scores * mask_scores
    result.pred_classes = labels
    return result


def _rows(t: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``t[indices]`` for ascending unique ``indices``; ``t`` itself (no copy) when they are
    every row."""
    return t if indices.numel() == t.shape[0] else t[indices]
