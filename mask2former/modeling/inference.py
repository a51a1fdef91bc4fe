"""The one inference path of every model family: pre-processing, network, post-processing.

A model family gets the model's eval forward (:func:`run_inference`), the ``Predictor``, the
demo, test-time augmentation, export and saved predictions by meeting the *inference
contract* (:class:`InferenceModel`):

- ``pixel_mean``, ``pixel_std``: (3, 1, 1) buffers of the input normalisation;
- ``size_divisibility``: the padded input's height and width are multiples of it;
- ``forward_network(images)``: normalised, padded images (B, 3, H, W) -> the network outputs
  ``(pred_logits, pred_masks)``: (B, Q, K+1) class logits, the last being "no object", and
  (B, Q, H/s, W/s) mask logits at the family's fixed stride s (4 for Mask2Former, 8 for
  FastInst; the post-processor only upsamples them). These are what the exported graph returns;
- ``postprocessor``: a :class:`PostProcessor`, which turns them into Detectron2 results.

Pre-processing is :func:`normalize_and_pad` (its size rule :func:`round_up_to_divisor`).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Collection, Sequence
from typing import Protocol

import torch
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList
from detectron2.utils.memory import retry_if_cuda_oom
from torch import nn
from torch.nn import functional as F

from .postprocessing import (
    instance_inference,
    instance_topk,
    panoptic_inference,
    panoptic_keep,
    semantic_inference,
)
from .strips import RowResizer, process_in_strips

__all__ = [
    "TASKS",
    "InferenceModel",
    "InferenceNetwork",
    "PostProcessor",
    "eval_network",
    "normalize_and_pad",
    "round_up_to_divisor",
    "run_inference",
]

logger = logging.getLogger(__name__)

TASKS = ("semantic", "panoptic", "instance")


def round_up_to_divisor(size: Sequence[int], divisor: int) -> tuple[int, ...]:
    """Each of ``size`` rounded up to a multiple of ``divisor`` (unchanged when divisor <= 1)."""
    divisor = max(int(divisor), 1)
    return tuple(-(-int(s) // divisor) * divisor for s in size)


def normalize_and_pad(
    images: Sequence[torch.Tensor],
    pixel_mean: torch.Tensor,
    pixel_std: torch.Tensor,
    *,
    size_divisibility: int = 0,
    pad_to: tuple[int, int] | None = None,
) -> ImageList:
    """Normalise images and zero-pad them (bottom and right) into one batch.

    Zero after normalisation is the mean colour.

    Args:
        images: (3, H_i, W_i) each, 0-255, in the model's channel order (any device).
        pixel_mean, pixel_std: (3, 1, 1) on the model's device; the batch goes there.
        size_divisibility: pad to the largest H and W rounded up to a multiple of this.
        pad_to: (H, W) to pad to instead (an exported graph's fixed input size); every image
            must fit inside it.

    Returns:
        ImageList: ``tensor`` (B, 3, H_pad, W_pad), ``image_sizes`` the (H_i, W_i).
    """
    device = pixel_mean.device
    normalized = [(x.to(device) - pixel_mean) / pixel_std for x in images]  # (3, H_i, W_i)
    if pad_to is None:
        return ImageList.from_tensors(normalized, size_divisibility)  # (B, 3, H_pad, W_pad)
    sizes = [tuple(x.shape[-2:]) for x in normalized]
    if any(h > pad_to[0] or w > pad_to[1] for h, w in sizes):
        raise ValueError(f"images of sizes {sizes} do not fit the padded size {tuple(pad_to)}")
    batch = normalized[0].new_zeros((len(normalized), 3, *pad_to))  # (B, 3, H, W)
    for b, x in enumerate(normalized):
        batch[b, :, : x.shape[-2], : x.shape[-1]] = x
    return ImageList(batch, sizes)


class InferenceModel(Protocol):
    """What a model family implements to use the shared inference path (module docstring)."""

    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor
    size_divisibility: int
    postprocessor: PostProcessor

    def forward_network(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class InferenceNetwork(nn.Module):
    """A model's network as a module, tensors in and out (what is exported or compiled).

    Args:
        model: an :class:`InferenceModel` (shared, not copied).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, H, W) normalised and padded -> pred_logits (B, Q, K+1), pred_masks
        (B, Q, H/s, W/s)."""
        return tuple(self.model.forward_network(images))


# model -> its compiled InferenceNetwork (dropped with the model)
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def eval_network(model: nn.Module) -> Callable[[torch.Tensor], tuple]:
    """The network :func:`run_inference` runs: ``model.forward_network``, or, when the model's
    ``compile_network`` is set (config ``TEST.COMPILE``), its :class:`InferenceNetwork` through
    ``torch.compile(dynamic=False)``: compiled at the first call of each input shape, then
    reused (outputs within float rounding of the eager ones). Kept outside the module, so the
    model's state dict and ``modules()`` are unchanged."""
    if not getattr(model, "compile_network", False):
        return model.forward_network
    compiled = _COMPILED.get(model)
    if compiled is None:
        logger.info("TEST.COMPILE: compiling the network at its first call (per input shape)")
        compiled = _COMPILED[model] = torch.compile(InferenceNetwork(model), dynamic=False)
    return compiled


def run_inference(model: nn.Module, batched_inputs: list[dict]) -> list[dict]:
    """The eval forward of an :class:`InferenceModel`: Detectron2 inputs -> results.

    Args:
        batched_inputs: per image "image" (3, H, W) 0-255 and optionally the output "height"
            and "width" (default: the image size).
    """
    images = normalize_and_pad(
        [x["image"] for x in batched_inputs],
        model.pixel_mean,
        model.pixel_std,
        size_divisibility=model.size_divisibility,
    )  # (B, 3, H_pad, W_pad)
    pred_logits, pred_masks = eval_network(model)(images.tensor)
    output_sizes = [
        (x.get("height", size[0]), x.get("width", size[1]))
        for x, size in zip(batched_inputs, images.image_sizes)
    ]
    return model.postprocessor(
        pred_logits,
        pred_masks,
        padded_size=tuple(images.tensor.shape[-2:]),
        image_sizes=images.image_sizes,
        output_sizes=output_sizes,
    )


class PostProcessor:
    """Network outputs -> per image the results of the enabled tasks, at the output size.

    Args:
        num_classes: K.
        tasks: enabled tasks among "semantic", "panoptic", "instance".
        object_mask_threshold: panoptic: minimum class score of a kept query.
        overlap_threshold: panoptic: minimum visible fraction of a query's mask.
        test_topk_per_image: instance: detections kept per image.
        thing_ids: contiguous ids of the thing classes (the others are stuff).
        sem_seg_postprocess_before_inference: resize the mask logits to the output size before
            inference (forced on with panoptic or instance); else resize the semantic scores.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        tasks: Collection[str],
        object_mask_threshold: float = 0.8,
        overlap_threshold: float = 0.8,
        test_topk_per_image: int = 100,
        thing_ids: Collection[int] = (),
        sem_seg_postprocess_before_inference: bool = False,
    ):
        unknown = set(tasks) - set(TASKS)
        if unknown or not tasks:
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {tuple(tasks)}")
        self.num_classes = num_classes
        self.tasks = tuple(t for t in TASKS if t in tasks)
        self.object_mask_threshold = object_mask_threshold
        self.overlap_threshold = overlap_threshold
        self.test_topk_per_image = test_topk_per_image
        self.thing_ids = [int(i) for i in thing_ids]
        self.sem_seg_postprocess_before_inference = (
            sem_seg_postprocess_before_inference or self.tasks != ("semantic",)
        )

    @classmethod
    def from_config(cls, cfg, metadata=None, test=None) -> PostProcessor:
        """From the inference switches ``test`` (default ``MODEL.MASK_FORMER.TEST``; a family
        with its own, e.g. ``MODEL.FASTINST.TEST``, passes them), ``MODEL.SEM_SEG_HEAD.
        NUM_CLASSES`` and ``TEST.DETECTIONS_PER_IMAGE``; thing ids from ``metadata`` (None:
        every class is stuff)."""
        test = cfg.MODEL.MASK_FORMER.TEST if test is None else test
        on = {
            "semantic": test.SEMANTIC_ON,
            "panoptic": test.PANOPTIC_ON,
            "instance": test.INSTANCE_ON,
        }
        mapping = getattr(metadata, "thing_dataset_id_to_contiguous_id", None) or {}
        return cls(
            num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            tasks=[t for t in TASKS if on[t]],
            object_mask_threshold=test.OBJECT_MASK_THRESHOLD,
            overlap_threshold=test.OVERLAP_THRESHOLD,
            test_topk_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
            thing_ids=list(mapping.values()),
            sem_seg_postprocess_before_inference=test.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE,
        )

    def __call__(
        self,
        pred_logits: torch.Tensor,
        pred_masks: torch.Tensor,
        *,
        padded_size: tuple[int, int],
        image_sizes: Sequence[tuple[int, int]],
        output_sizes: Sequence[tuple[int, int]],
    ) -> list[dict]:
        """
        Args:
            pred_logits: (B, Q, K+1) class logits.
            pred_masks: (B, Q, h, w) mask logits at 1/4 of the padded input.
            padded_size: (H_pad, W_pad) of the network input.
            image_sizes: per image, the (H, W) of its valid (unpadded) part of the input.
            output_sizes: per image, the (height, width) of the results.

        Returns:
            per image, as enabled: "sem_seg" (K, height, width) scores, "panoptic_seg"
            ((height, width) int32 ids, segments_info) and "instances".
        """
        results = []
        for mask_cls, masks, image_size, output_size in zip(
            pred_logits, pred_masks, image_sizes, output_sizes
        ):
            if self.sem_seg_postprocess_before_inference:
                # Only the queries some task reads are resized to full resolution.
                queries = self.queries_needed(mask_cls)  # (Q',) or None: all
                if queries is not None:
                    mask_cls, masks = mask_cls[queries], masks[queries]
                if RowResizer.fits(masks, padded_size):
                    resizer = RowResizer(masks, padded_size, image_size, output_size)
                    results.append(self.process_in_strips(mask_cls.to(masks), resizer))
                else:
                    mask_pred = self.resize_masks(masks, padded_size, image_size, output_size)
                    results.append(self.process_image(mask_cls.to(mask_pred), mask_pred))
            else:  # semantic only: resize the scores instead of the Q mask logits
                mask_pred = _upsample(masks, padded_size)  # (Q, H_pad, W_pad)
                sem_seg = retry_if_cuda_oom(semantic_inference)(mask_cls, mask_pred)
                sem_seg = retry_if_cuda_oom(sem_seg_postprocess)(sem_seg, image_size, *output_size)
                results.append({"sem_seg": sem_seg})  # (K, height, width)
        return results

    def queries_needed(self, mask_cls: torch.Tensor) -> torch.Tensor | None:
        """The queries whose masks the enabled tasks read, from one image's class logits
        (Q, K+1): (Q',) ascending indices, or None when that is all of them (semantic reads
        every query). Panoptic reads its confident queries, instance those of its top-k
        detections; the results on these queries alone are the same as on all."""
        if "semantic" in self.tasks:
            return None
        needed = torch.zeros(mask_cls.shape[0], dtype=torch.bool, device=mask_cls.device)
        if "panoptic" in self.tasks:
            kept, _, _ = panoptic_keep(
                mask_cls,
                num_classes=self.num_classes,
                object_mask_threshold=self.object_mask_threshold,
            )
            needed[kept] = True
        if "instance" in self.tasks:
            # Every query of the top-k, before the thing filter: on fewer queries the top-k
            # would reach further down and pick other detections.
            _, _, queries = instance_topk(
                mask_cls,
                num_classes=self.num_classes,
                test_topk_per_image=self.test_topk_per_image,
                thing_ids=None,
            )
            needed[queries] = True
        if bool(needed.all()):
            return None
        return needed.nonzero().squeeze(1)

    @staticmethod
    def resize_masks(
        masks: torch.Tensor,
        padded_size: tuple[int, int],
        image_size: tuple[int, int],
        output_size: tuple[int, int],
    ) -> torch.Tensor:
        """One image's (Q, h, w) mask logits -> (Q, height, width): upsampled to the padded
        input, cropped to the image, resized to the output size (skipped when the crop has that
        size already: bilinear resizing to the same size is the identity)."""
        mask_pred = _upsample(masks, padded_size)  # (Q, H_pad, W_pad)
        h, w = image_size
        if tuple(mask_pred.shape[-2:]) != (h, w):
            mask_pred = mask_pred[:, :h, :w]  # (Q, H, W)
        if (h, w) == tuple(output_size):
            return mask_pred.contiguous()
        return _upsample(mask_pred, output_size)  # (Q, height, width)

    def process_in_strips(self, mask_cls: torch.Tensor, resizer: RowResizer) -> dict:
        """One image's results, as :meth:`process_image` gives them on ``resizer``'s resized
        masks, computed strip by strip without them (:mod:`mask2former.modeling.strips`)."""
        return process_in_strips(
            mask_cls,
            resizer,
            tasks=self.tasks,
            num_classes=self.num_classes,
            object_mask_threshold=self.object_mask_threshold,
            overlap_threshold=self.overlap_threshold,
            test_topk_per_image=self.test_topk_per_image,
            thing_ids=self.thing_ids,
            instance_thing_ids=self.thing_ids if "panoptic" in self.tasks else None,
        )

    def process_image(
        self,
        mask_cls: torch.Tensor,
        mask_pred: torch.Tensor,
        tasks: Collection[str] | None = None,
    ) -> dict:
        """One image's results from its class logits (Q, K+1) and mask logits (Q, H, W) at the
        output size; ``tasks``: a subset of the enabled tasks (default all of them)."""
        tasks = self.tasks if tasks is None else [t for t in self.tasks if t in tasks]
        result = {}
        mask_prob = None  # (Q, H, W): computed once when semantic needs every query's
        if "semantic" in tasks:
            mask_prob = mask_pred.sigmoid()
            result["sem_seg"] = retry_if_cuda_oom(semantic_inference)(
                mask_cls, mask_pred, mask_prob=mask_prob
            )
        if "panoptic" in tasks:
            result["panoptic_seg"] = retry_if_cuda_oom(panoptic_inference)(
                mask_cls,
                mask_pred,
                num_classes=self.num_classes,
                object_mask_threshold=self.object_mask_threshold,
                overlap_threshold=self.overlap_threshold,
                thing_ids=self.thing_ids,
                mask_prob=mask_prob,
            )
        if "instance" in tasks:
            result["instances"] = retry_if_cuda_oom(instance_inference)(
                mask_cls,
                mask_pred,
                num_classes=self.num_classes,
                test_topk_per_image=self.test_topk_per_image,
                thing_ids=self.thing_ids if "panoptic" in self.tasks else None,
                image_size=tuple(mask_pred.shape[-2:]),
                mask_prob=mask_prob,
            )
        return result

    def __repr__(self) -> str:
        return (
            f"PostProcessor(num_classes={self.num_classes}, tasks={self.tasks}, "
            f"object_mask_threshold={self.object_mask_threshold}, "
            f"overlap_threshold={self.overlap_threshold}, "
            f"test_topk_per_image={self.test_topk_per_image}, thing_ids={self.thing_ids})"
        )


def _upsample(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(Q, h, w) -> (Q, H, W), bilinear."""
    if masks.shape[0] == 0:  # no query kept (F.interpolate needs some)
        return masks.new_zeros((0, *size))
    return F.interpolate(masks[None], size=tuple(size), mode="bilinear", align_corners=False)[0]
