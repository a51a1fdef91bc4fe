"""Post-processing in strips of output rows: the same results as resizing all Q mask logits to
the output size and then running the tasks, without the (Q, H, W) tensors.

At 800x1216 one image's 100 mask logits are 389 MB at full resolution, and their sigmoid as
much again. Making those tensors, and the passes over them that do not stay in the cache,
cost more than the arithmetic (each fresh large tensor is also a page fault per 4 KiB on
first touch). :func:`process_in_strips` instead resizes a strip of output rows at a time
(:class:`RowResizer`), hands it to one accumulator per task, and keeps only the results at
full resolution: the semantic scores, the panoptic winners and the instance masks.

The resizing is the one of :meth:`mask2former.modeling.inference.PostProcessor.resize_masks`
(bilinear to the padded input, crop to the image, bilinear to the output size). The first
step runs ``F.interpolate`` on a band of rows (exact for the integer stride, see
:class:`RowResizer`); the second, when the output size differs, is done separably: columns
with ``F.interpolate`` (rows unchanged), then rows as the two-tap blend that ``F.interpolate``
computes, with the same source indices and weights.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from detectron2.structures import Instances
from torch.nn import functional as F

from .postprocessing import (
    RESULT_KEYS,
    instance_detections,
    instance_result,
    panoptic_keep,
    panoptic_segments,
)

__all__ = ["RowResizer", "process_in_strips"]


def _source_rows(in_size: int, out_size: int, device) -> tuple[torch.Tensor, ...]:
    """Bilinear resizing of ``in_size`` rows to ``out_size`` (``align_corners=False``), per
    output row: the two source rows (out_size,) int64 and their weights (out_size,) float32,
    computed as PyTorch's ``upsample_bilinear2d`` does (source = scale * (dst + 0.5) - 0.5,
    clamped at 0; scale = in / out)."""
    scale = torch.tensor(in_size / out_size, dtype=torch.float32)
    dst = torch.arange(out_size, dtype=torch.float32)
    src = (scale * (dst + 0.5) - 0.5).clamp(min=0)  # (out_size,)
    i0 = src.to(torch.int64)
    w1 = src - i0
    i1 = torch.where(i0 < in_size - 1, i0 + 1, i0)
    return i0.to(device), i1.to(device), (1 - w1).to(device), w1.to(device)


class _RowMap:
    """One bilinear resizing along rows, ``in_size`` -> ``out_size`` (see :func:`_source_rows`)."""

    def __init__(self, in_size: int, out_size: int, device):
        self.identity = in_size == out_size
        self.i0, self.i1, self.w0, self.w1 = _source_rows(in_size, out_size, device)

    def needed(self, start: int, stop: int) -> tuple[int, int]:
        """The source rows [first, last) that output rows [start, stop) read."""
        if self.identity:
            return start, stop
        return int(self.i0[start]), int(self.i1[stop - 1]) + 1

    def apply(self, rows: torch.Tensor, first: int, start: int, stop: int) -> torch.Tensor:
        """Output rows [start, stop) (Q, stop - start, W) from source rows (Q, n, W) that begin
        at source row ``first``."""
        if self.identity:
            return rows[:, start - first : stop - first]
        top = rows.index_select(1, self.i0[start:stop] - first)  # (Q, r, W)
        bottom = rows.index_select(1, self.i1[start:stop] - first)  # (Q, r, W)
        return top.mul_(self.w0[start:stop, None]).addcmul_(bottom, self.w1[start:stop, None])


class RowResizer:
    """Strips of output rows of one image's resized mask logits.

    ``RowResizer(masks, padded_size, image_size, output_size).rows(y0, y1)`` equals
    ``PostProcessor.resize_masks(masks, padded_size, image_size, output_size)[:, y0:y1]``
    (to float rounding).

    The upsampling to the padded size, by the network's integer stride s, runs
    ``F.interpolate`` on a band of rows at the network's stride with one row more on each
    side: bilinear upsampling by s is the same on a band as on the whole map, away from the
    band's ends, because the band's first row i goes to output row s * i either way.

    Args:
        masks: (Q, h, w) mask logits at the network's stride.
        padded_size: (H_pad, W_pad) of the network input, (s * h, s * w).
        image_size: (H, W) of the image's valid part of it.
        output_size: (height, width) of the results.
    """

    def __init__(
        self,
        masks: torch.Tensor,
        padded_size: tuple[int, int],
        image_size: tuple[int, int],
        output_size: tuple[int, int],
    ):
        self.masks = masks
        self.padded_size = tuple(int(s) for s in padded_size)
        self.image_size = tuple(int(s) for s in image_size)
        self.output_size = tuple(int(s) for s in output_size)
        self.stride = self.padded_size[0] // masks.shape[-2]
        if self.padded_size != (self.stride * masks.shape[-2], self.stride * masks.shape[-1]):
            raise ValueError(
                f"RowResizer: the padded size {self.padded_size} is not an integer multiple of "
                f"the masks' size {tuple(masks.shape[-2:])}"
            )
        self.to_output = _RowMap(self.image_size[0], self.output_size[0], masks.device)

    @staticmethod
    def fits(masks: torch.Tensor, padded_size: tuple[int, int]) -> bool:
        """Whether ``padded_size`` is the masks' size times one integer stride."""
        h, w = masks.shape[-2:]
        stride = int(padded_size[0]) // max(h, 1)
        return stride >= 1 and tuple(int(s) for s in padded_size) == (stride * h, stride * w)

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Output rows [start, stop) of the resized logits: (Q, stop - start, width)."""
        if self.masks.shape[0] == 0:  # no query kept (F.interpolate needs some)
            return self.masks.new_zeros((0, stop - start, self.output_size[1]))
        first, last = self.to_output.needed(start, stop)  # rows of the cropped logits
        cropped = self._padded_rows(first, last)  # (Q, last - first, W)
        if self.to_output.identity and self.image_size[1] == self.output_size[1]:
            return cropped
        wide = F.interpolate(
            cropped[None], size=(cropped.shape[1], self.output_size[1]), mode="bilinear"
        )[0]  # (Q, last - first, width): columns only
        return self.to_output.apply(wide, first, start, stop)  # (Q, stop - start, width)

    def _padded_rows(self, first: int, last: int) -> torch.Tensor:
        """Rows [first, last) of the logits upsampled to the padded size, cropped to the image
        width: (Q, last - first, W)."""
        s, h = self.stride, self.masks.shape[-2]
        low_first = max(first // s - 1, 0)
        low_last = min(-(-last // s) + 1, h)
        band = self.masks[None, :, low_first:low_last]  # (1, Q, n, w)
        up = F.interpolate(band, size=(s * band.shape[2], self.padded_size[1]), mode="bilinear")
        offset = s * low_first
        return up[0, :, first - offset : last - offset, : self.image_size[1]]


class _Semantic:
    """Semantic scores (K, H, W): class probabilities times mask probabilities, per strip."""

    def __init__(self, mask_cls: torch.Tensor, height: int, width: int):
        self.cls_t = F.softmax(mask_cls, dim=-1)[:, :-1].t().contiguous()  # (K, Q)
        self.scores = mask_cls.new_empty((self.cls_t.shape[0], height, width))  # (K, H, W)

    def add(self, start: int, stop: int, logits: torch.Tensor, prob: torch.Tensor) -> None:
        q, r, w = prob.shape
        out = self.scores.view(self.scores.shape[0], -1)[:, start * w : stop * w]  # (K, r*W)
        torch.mm(self.cls_t, prob.reshape(q, r * w), out=out)

    def result(self) -> torch.Tensor:
        return self.scores


class _Panoptic:
    """Panoptic inference (``postprocessing.panoptic_inference``), per strip: the winning kept
    query of every pixel and the three areas of each kept query."""

    def __init__(
        self,
        mask_cls,
        height,
        width,
        *,
        num_classes,
        object_mask_threshold,
        overlap_threshold,
        thing_ids,
    ):
        self.kept, self.scores, self.classes = panoptic_keep(
            mask_cls, num_classes=num_classes, object_mask_threshold=object_mask_threshold
        )  # (Q',) each
        self.overlap_threshold = overlap_threshold
        self.thing_ids = thing_ids
        n, device = self.kept.numel(), mask_cls.device
        self.winner = torch.zeros((height, width), dtype=torch.int64, device=device)
        self.in_foreground = torch.zeros((height, width), dtype=torch.bool, device=device)
        self.won_area = torch.zeros(n, dtype=torch.int64, device=device)
        self.foreground_area = torch.zeros(n, dtype=torch.int64, device=device)
        self.both_area = torch.zeros(n, dtype=torch.int64, device=device)

    def add(self, start: int, stop: int, logits: torch.Tensor, prob: torch.Tensor) -> None:
        n = self.kept.numel()
        if n == 0:
            return
        cur = prob.index_select(0, self.kept)  # (Q', r, W)
        winner = (self.scores.view(-1, 1, 1) * cur).argmax(0)  # (r, W)
        in_foreground = cur.gather(0, winner[None])[0] >= 0.5  # (r, W)
        self.winner[start:stop] = winner
        self.in_foreground[start:stop] = in_foreground
        self.won_area += torch.bincount(winner.flatten(), minlength=n)
        self.foreground_area += (cur >= 0.5).sum((1, 2))
        self.both_area += torch.bincount(winner[in_foreground], minlength=n)

    def result(self) -> tuple[torch.Tensor, list[dict]]:
        segment_of, segments_info = panoptic_segments(
            self.classes,
            self.won_area,
            self.foreground_area,
            self.both_area,
            overlap_threshold=self.overlap_threshold,
            thing_ids=self.thing_ids,
        )
        if not segments_info:
            return torch.zeros_like(self.winner, dtype=torch.int32), []
        lookup = torch.tensor(segment_of, dtype=torch.int32, device=self.winner.device)
        panoptic_seg = torch.where(self.in_foreground, lookup[self.winner], 0)  # (H, W)
        return panoptic_seg.to(torch.int32), segments_info


class _Instance:
    """Instance inference (``postprocessing.instance_inference``), per strip: the binary masks
    of the detections' queries, their areas, summed probabilities inside and extents."""

    def __init__(self, mask_cls, height, width, *, num_classes, test_topk_per_image, thing_ids):
        self.scores, self.labels, self.queries, self.which = instance_detections(
            mask_cls,
            num_classes=num_classes,
            test_topk_per_image=test_topk_per_image,
            thing_ids=thing_ids,
        )
        u, device = self.queries.numel(), mask_cls.device
        self.size = (height, width)
        self.masks = torch.empty((u, height, width), device=device)  # (U, H, W) 0/1
        self.area = torch.zeros(u, dtype=torch.float64, device=device)
        self.inside = torch.zeros(u, device=device)
        self.rows_any = torch.zeros((u, height), dtype=torch.bool, device=device)
        self.cols_any = torch.zeros((u, width), dtype=torch.bool, device=device)

    def add(self, start: int, stop: int, logits: torch.Tensor, prob: torch.Tensor) -> None:
        u = self.queries.numel()
        if u == 0:
            return
        if u != logits.shape[0]:
            logits, prob = logits.index_select(0, self.queries), prob.index_select(0, self.queries)
        masks = self.masks[:, start:stop]  # (U, r, W) view of the result
        torch.gt(logits, 0, out=masks)
        row_area = masks.sum(2)  # (U, r): exact counts
        self.area += row_area.sum(1, dtype=torch.float64)
        self.rows_any[:, start:stop] = row_area > 0
        self.cols_any |= masks.amax(1) > 0
        r, w = masks.shape[1:]
        self.inside += torch.bmm(prob.reshape(u, 1, r * w), masks.reshape(u, r * w, 1)).view(-1)

    def result(self) -> Instances:
        boxes = _boxes(self.rows_any, self.cols_any)
        mask_scores = self.inside / (self.area.float() + 1e-6)  # (U,)
        return instance_result(
            self.size, self.scores, self.labels, self.which, self.masks, boxes, mask_scores
        )


def _boxes(rows_any: torch.Tensor, cols_any: torch.Tensor) -> torch.Tensor:
    """Tight boxes (U, 4) XYXY from the rows (U, H) and columns (U, W) a mask touches, as
    ``BitMasks.get_bounding_boxes`` gives them (x1, y1 exclusive; all zeros when empty)."""

    def span(hit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.arange(hit.shape[1], device=hit.device).expand_as(hit)
        first = torch.where(hit, index, hit.shape[1]).amin(1)
        last = torch.where(hit, index, -1).amax(1)
        return first, last + 1

    x0, x1 = span(cols_any)
    y0, y1 = span(rows_any)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).float()  # (U, 4)
    empty = ~(rows_any.any(1) & cols_any.any(1))
    return boxes.masked_fill_(empty[:, None], 0)


def process_in_strips(
    mask_cls: torch.Tensor,
    resizer: RowResizer,
    *,
    tasks: Collection[str],
    num_classes: int,
    object_mask_threshold: float,
    overlap_threshold: float,
    test_topk_per_image: int,
    thing_ids: Collection[int],
    instance_thing_ids: Collection[int] | None,
    strip_pixels: int = 1 << 15,
) -> dict:
    """One image's results, as ``PostProcessor.process_image`` gives them on the resized masks.

    Args:
        mask_cls: (Q, K+1) class logits.
        resizer: the image's :class:`RowResizer`, over the same Q queries.
        tasks: among "semantic", "panoptic" and "instance".
        thing_ids: the panoptic thing classes; ``instance_thing_ids``: the classes instance
            detections are kept for (None: all).
        strip_pixels: output pixels per strip (rows of the output width).

    Returns:
        as enabled, "sem_seg" (K, H, W), "panoptic_seg" and "instances".
    """
    height, width = resizer.output_size
    makers = {
        "semantic": lambda: _Semantic(mask_cls, height, width),
        "panoptic": lambda: _Panoptic(
            mask_cls,
            height,
            width,
            num_classes=num_classes,
            object_mask_threshold=object_mask_threshold,
            overlap_threshold=overlap_threshold,
            thing_ids=thing_ids,
        ),
        "instance": lambda: _Instance(
            mask_cls,
            height,
            width,
            num_classes=num_classes,
            test_topk_per_image=test_topk_per_image,
            thing_ids=instance_thing_ids,
        ),
    }
    parts = {task: makers[task]() for task in tasks}
    rows = max(1, strip_pixels // max(width, 1))
    for start in range(0, height, rows):
        stop = min(start + rows, height)
        logits = resizer.rows(start, stop)  # (Q, r, W)
        prob = logits.sigmoid()  # (Q, r, W)
        for part in parts.values():
            part.add(start, stop, logits, prob)
    return {RESULT_KEYS[task]: part.result() for task, part in parts.items()}
