"""Post-processing in strips of output rows against resizing every mask first and running the
tasks on the full-size logits (``PostProcessor.resize_masks`` + ``process_image``)."""

import itertools

import pytest
import torch
from detectron2.structures import BitMasks

from mask2former.modeling.inference import PostProcessor
from mask2former.modeling.strips import RowResizer, _boxes, process_in_strips

K = 5  # classes 0, 1 things; 2, 3, 4 stuff
THINGS = [0, 1]


def _case(q: int, h: int, w: int, seed: int = 0):
    """Class logits (Q, K+1) with confident queries (several of one stuff class, so that
    panoptic merges them) and smooth mask logits (Q, h, w) with empty and full masks."""
    g = torch.Generator().manual_seed(seed)
    mask_cls = torch.randn(q, K + 1, generator=g)
    mask_cls[: q // 2, torch.randint(0, K, (q // 2,), generator=g)] += 6.0
    mask_cls[q // 2 : q // 2 + 3, 3] += 8.0  # three confident queries of stuff class 3
    mask_cls[2:4, 0] += 8.0  # two confident thing queries ...
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    centres = torch.rand(q, 2, generator=g) * 2 - 1
    radius = torch.rand(q, 1, 1, generator=g) * 0.8 + 0.1
    dist = (yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2
    masks = 8 * (radius**2 - dist) + 0.3 * torch.randn(q, h, w, generator=g)
    masks[0] = -5.0  # empty everywhere
    masks[1] = 5.0  # full
    masks[2, : h // 2, : w // 2] = 9.0  # ... with sure masks of their own
    masks[3, h // 2 :, w // 2 :] = 9.0
    masks[q // 2, : h // 2, w // 2 :] = 9.0  # two stuff queries of one class, merged
    masks[q // 2 + 1, h // 2 :, : w // 2] = 9.0
    return mask_cls, masks


@pytest.mark.parametrize(
    "stride,image,output",
    [
        (4, (48, 64), (48, 64)),  # no crop, no resize
        (4, (45, 61), (45, 61)),  # crop only
        (4, (45, 61), (70, 90)),  # crop and upsample
        (8, (45, 61), (30, 41)),  # stride 8, crop and downsample
    ],
)
def test_row_strips_equal_the_whole_resize(stride, image, output):
    _, low = _case(6, 48 // stride, 64 // stride)
    padded = (48, 64)
    whole = PostProcessor.resize_masks(low, padded, image, output)  # (Q, height, width)
    resizer = RowResizer(low, padded, image, output)
    for rows in (1, 3, 7, output[0]):
        strips = [
            resizer.rows(y, min(y + rows, output[0])) for y in range(0, output[0], rows)
        ]
        torch.testing.assert_close(torch.cat(strips, 1), whole, rtol=0, atol=1e-5)


def test_row_resizer_needs_an_integer_stride_and_the_postprocessor_falls_back():
    mask_cls, low = _case(6, 12, 16)
    assert RowResizer.fits(low, (48, 64)) and not RowResizer.fits(low, (50, 64))
    with pytest.raises(ValueError, match="not an integer multiple"):
        RowResizer(low, (50, 64), (50, 64), (50, 64))
    post = PostProcessor(num_classes=K, tasks=["semantic", "instance"], test_topk_per_image=8)
    (result,) = post(
        mask_cls[None], low[None], padded_size=(50, 64), image_sizes=[(50, 64)],
        output_sizes=[(50, 64)],
    )
    full = PostProcessor.resize_masks(low, (50, 64), (50, 64), (50, 64))
    expected = post.process_image(mask_cls, full)
    torch.testing.assert_close(result["sem_seg"], expected["sem_seg"])


TASK_SETS = [
    tasks
    for n in (1, 2, 3)
    for tasks in itertools.combinations(("semantic", "panoptic", "instance"), n)
]


@pytest.mark.parametrize("tasks", TASK_SETS, ids=["+".join(t) for t in TASK_SETS])
@pytest.mark.parametrize("output", [(45, 61), (60, 50)])
def test_strips_give_the_results_of_the_whole_masks(tasks, output):
    mask_cls, low = _case(12, 12, 16, seed=1)
    padded, image = (48, 64), (45, 61)
    post = PostProcessor(
        num_classes=K,
        tasks=tasks,
        overlap_threshold=0.5,
        test_topk_per_image=20,  # 12 queries x 5 classes: queries with several detections
        thing_ids=THINGS,
    )
    expected = post.process_image(mask_cls, post.resize_masks(low, padded, image, output))
    got = process_in_strips(
        mask_cls,
        RowResizer(low, padded, image, output),
        tasks=post.tasks,
        num_classes=K,
        object_mask_threshold=0.8,
        overlap_threshold=0.5,
        test_topk_per_image=20,
        thing_ids=THINGS,
        instance_thing_ids=THINGS if "panoptic" in tasks else None,
        strip_pixels=4 * output[1] + 1,  # strips of 4 rows, the last one shorter
    )
    assert set(got) == set(expected)
    if "semantic" in tasks:
        torch.testing.assert_close(got["sem_seg"], expected["sem_seg"], rtol=0, atol=1e-5)
    if "panoptic" in tasks:
        seg, info = got["panoptic_seg"]
        assert info == expected["panoptic_seg"][1]
        assert any(not s["isthing"] for s in info) and any(s["isthing"] for s in info)
        assert seg.dtype == torch.int32 and torch.equal(seg, expected["panoptic_seg"][0])
    if "instance" in tasks:
        a, b = got["instances"], expected["instances"]
        assert len(a) == len(b) > 0 and a.image_size == b.image_size == output
        assert torch.equal(a.pred_classes, b.pred_classes)
        assert torch.equal(a.pred_masks, b.pred_masks) and a.pred_masks.dtype == torch.float32
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
        torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=5e-5)
        # an empty mask scores 0 and gets a zero box; some query has several detections
        assert (a.pred_masks.flatten(1).sum(1) == 0).any()
        assert a.pred_classes.numel() > torch.unique(a.pred_masks.flatten(1), dim=0).shape[0]


def test_strips_with_no_confident_query_give_an_empty_panoptic_result():
    mask_cls, low = _case(4, 12, 16)
    mask_cls[:, -1] += 50.0  # every query "no object"
    post = PostProcessor(num_classes=K, tasks=["panoptic"], thing_ids=THINGS)
    (result,) = post(
        mask_cls[None], low[None], padded_size=(48, 64), image_sizes=[(48, 64)],
        output_sizes=[(48, 64)],
    )
    seg, info = result["panoptic_seg"]
    assert info == [] and seg.shape == (48, 64) and not seg.any()
    assert PostProcessor.resize_masks(low[:0], (48, 64), (45, 61), (45, 61)).shape == (0, 45, 61)


def test_boxes_from_touched_rows_and_columns_match_detectron2():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(20, 17, 23, generator=g) > 0.97
    masks[0] = False
    masks[1] = True
    masks[2, 16, 22] = True
    got = _boxes(masks.any(2), masks.any(1))
    torch.testing.assert_close(got, BitMasks(masks).get_bounding_boxes().tensor, rtol=0, atol=0)
