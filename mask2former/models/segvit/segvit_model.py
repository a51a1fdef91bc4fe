"""``SegViT`` meta-architecture: plain ViT -> ATM head -> class-paired losses, or semantic
scores by whole-image or sliding-window inference.

It meets the package's inference contract (:mod:`mask2former.modeling.inference`): the head's
stride-16 mask logits are upsampled bilinearly to 1/4 of the input in :meth:`forward_network`,
and the shared ``PostProcessor(tasks=("semantic",))`` turns (class, mask) logits into scores
``sum_q softmax(class_q)[c] * sigmoid(mask_q)``, the reference's inference.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_sem_seg_head
from detectron2.modeling.backbone import Backbone
from detectron2.modeling.postprocessing import sem_seg_postprocess
from torch import nn
from torch.nn import functional as F

from ...modeling.inference import (
    PostProcessor,
    normalize_and_pad,
    round_up_to_divisor,
    run_inference,
)
from ...modeling.postprocessing import semantic_inference
from .loss import ATMCriterion, semantic_targets

__all__ = ["SegViT", "window_origins"]

logger = logging.getLogger(__name__)

TEST_MODES = ("whole", "slide")


def window_origins(size: int, crop: int, stride: int) -> list[int]:
    """Start of each sliding window along one axis (mmseg's rule): windows every ``stride``, the
    last one moved back to end at the image edge; one window when the image fits in it."""
    count = max(size - crop + stride - 1, 0) // stride + 1
    return [max(min(i * stride, size - crop), 0) for i in range(count)]


@META_ARCH_REGISTRY.register()
class SegViT(nn.Module):
    """SegViT semantic segmentation (plain or Shrunk, by the backbone and head given).

    Training inputs need "sem_seg" (H, W) int64 labels (the semantic mapper's output); the
    returned losses are weighted by ``criterion.weight_dict``. Inference returns per image
    "sem_seg" (K, height, width) scores.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        sem_seg_head: nn.Module,
        criterion: ATMCriterion,
        num_classes: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        ignore_value: int = 255,
        size_divisibility: int = -1,
        deep_supervision: bool = True,
        test_mode: str = "whole",
        slide_crop: tuple[int, int] = (640, 640),
        slide_stride: tuple[int, int] = (608, 608),
        pad_windows: bool = False,
    ):
        """
        Args:
            backbone: :class:`D2PlainViT`.
            sem_seg_head: :class:`ATMHead` or :class:`ShrunkATMHead`.
            criterion: the loss.
            num_classes: K.
            pixel_mean, pixel_std: input normalisation.
            ignore_value: label of ignored pixels (also the label padding).
            size_divisibility: pad inputs to a multiple of this; < 0: the backbone's.
            deep_supervision: also supervise the head's "aux_outputs".
            test_mode: "whole" or "slide".
            slide_crop, slide_stride: window and step (height, width) of "slide".
            pad_windows: pad every window to ``slide_crop`` (the Shrunk head needs the crop size);
                else to a multiple of ``size_divisibility``.
        """
        super().__init__()
        if test_mode not in TEST_MODES:
            raise ValueError(f"test_mode must be one of {TEST_MODES}, got {test_mode!r}")
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        self.postprocessor = PostProcessor(num_classes=num_classes, tasks=("semantic",))
        self.ignore_value = ignore_value
        if size_divisibility < 0:
            size_divisibility = backbone.size_divisibility
        self.size_divisibility = size_divisibility
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.deep_supervision = deep_supervision
        self.test_mode = test_mode
        self.slide_crop = (int(slide_crop[0]), int(slide_crop[1]))
        self.slide_stride = (int(slide_stride[0]), int(slide_stride[1]))
        if min(self.slide_stride) <= 0 or min(self.slide_crop) <= 0:
            raise ValueError(f"slide crop {slide_crop} and stride {slide_stride} must be > 0")
        self.pad_windows = pad_windows
        if pad_windows and any(c % size_divisibility for c in self.slide_crop):
            raise ValueError(f"slide crop {slide_crop} is not a multiple of the size "
                             f"divisibility {size_divisibility}")

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        sem_seg_head = build_sem_seg_head(cfg, backbone.output_shape())
        sv = cfg.MODEL.SEGVIT
        weights = {"loss_ce": sv.CLASS_WEIGHT, "loss_mask": sv.MASK_WEIGHT,
                   "loss_dice": sv.DICE_WEIGHT}
        weight_dict = dict(weights)
        num_aux = _num_aux_outputs(cfg) if sv.DEEP_SUPERVISION else 0
        for i in range(num_aux):
            weight_dict.update({f"{k}_{i}": v for k, v in weights.items()})
        criterion = ATMCriterion(
            num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            weight_dict=weight_dict,
            eos_coef=sv.NO_OBJECT_WEIGHT,
            focal_alpha=sv.FOCAL_ALPHA,
            focal_gamma=sv.FOCAL_GAMMA,
            exclude_ignore=sv.EXCLUDE_IGNORE,
        )
        return {
            "backbone": backbone,
            "sem_seg_head": sem_seg_head,
            "criterion": criterion,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "deep_supervision": sv.DEEP_SUPERVISION,
            "test_mode": sv.TEST.MODE,
            "slide_crop": tuple(sv.TEST.SLIDE_CROP),
            "slide_stride": tuple(sv.TEST.SLIDE_STRIDE),
            "pad_windows": cfg.MODEL.SEM_SEG_HEAD.NAME == "ShrunkATMHead",
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def forward(self, batched_inputs: list[dict]):
        """
        Args:
            batched_inputs: per image "image" (3, H, W) 0-255 in the config's format; training:
                "sem_seg" (H, W) labels; inference: optionally the output "height", "width".

        Returns:
            training: weighted losses; inference: per image {"sem_seg": (K, height, width)}.
        """
        if not self.training:
            if self.test_mode == "slide":
                return [self.slide_inference(x) for x in batched_inputs]
            return run_inference(self, batched_inputs)
        if any("sem_seg" not in x for x in batched_inputs):
            raise ValueError("SegViT: training inputs need 'sem_seg' (the semantic mapper's)")
        images = normalize_and_pad(
            [x["image"] for x in batched_inputs], self.pixel_mean, self.pixel_std,
            size_divisibility=self.size_divisibility,
        )  # (B, 3, H, W)
        labels = self._padded_labels([x["sem_seg"] for x in batched_inputs],
                                     tuple(images.tensor.shape[-2:]))  # (B, H, W)
        outputs = self.sem_seg_head(self.backbone(images.tensor))
        if not self.deep_supervision:
            outputs.pop("aux_outputs", None)
        losses = self.criterion(outputs, semantic_targets(labels, self.ignore_value))
        weight_dict = self.criterion.weight_dict
        return {k: v * weight_dict[k] for k, v in losses.items() if k in weight_dict}

    def _padded_labels(self, labels: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """Labels padded with ``ignore_value`` to (B, H, W) on the model's device."""
        out = torch.full((len(labels), *size), self.ignore_value, dtype=torch.int64,
                         device=self.device)  # (B, H, W)
        for b, label in enumerate(labels):
            out[b, : label.shape[-2], : label.shape[-1]] = label.to(self.device)
        return out

    def forward_network(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised, padded images (B, 3, H, W) -> pred_logits (B, K, K+1) and pred_masks
        (B, K, H/4, W/4), the head's stride-16 masks upsampled bilinearly."""
        outputs = self.sem_seg_head(self.backbone(images))
        size = (images.shape[-2] // 4, images.shape[-1] // 4)
        masks = F.interpolate(outputs["pred_masks"], size=size, mode="bilinear",
                              align_corners=False)  # (B, K, H/4, W/4)
        return outputs["pred_logits"], masks

    @torch.no_grad()
    def slide_inference(self, inputs: dict) -> dict:
        """One image by sliding windows (``slide_crop`` every ``slide_stride``); each window's
        scores are computed as in whole-image inference, overlaps are averaged, and the result is
        resized to the output size.

        Returns:
            {"sem_seg": (K, height, width)}.
        """
        image = inputs["image"]
        height, width = image.shape[-2:]
        image = (image.to(self.device) - self.pixel_mean) / self.pixel_std  # (3, H, W)
        num_classes = self.postprocessor.num_classes
        scores = image.new_zeros((num_classes, height, width))  # (K, H, W)
        count = image.new_zeros((1, height, width))  # (1, H, W)
        (crop_h, crop_w), (step_h, step_w) = self.slide_crop, self.slide_stride
        for y in window_origins(height, crop_h, step_h):
            for x in window_origins(width, crop_w, step_w):
                window = image[:, y : y + crop_h, x : x + crop_w]  # (3, h, w)
                h, w = window.shape[-2:]
                if self.pad_windows:
                    padded = (crop_h, crop_w)
                else:
                    padded = round_up_to_divisor((h, w), self.size_divisibility)
                batch = window.new_zeros((1, 3, *padded))  # (1, 3, h_pad, w_pad)
                batch[0, :, :h, :w] = window
                logits, masks = self.forward_network(batch)
                masks = F.interpolate(masks, size=padded, mode="bilinear",
                                      align_corners=False)[0]  # (K, h_pad, w_pad)
                window_scores = semantic_inference(logits[0], masks)  # (K, h_pad, w_pad)
                scores[:, y : y + h, x : x + w] += window_scores[:, :h, :w]
                count[:, y : y + h, x : x + w] += 1
        scores = scores / count
        out_h, out_w = inputs.get("height", height), inputs.get("width", width)
        return {"sem_seg": sem_seg_postprocess(scores, (height, width), out_h, out_w)}


def _num_aux_outputs(cfg) -> int:
    """How many earlier predictions the configured head returns."""
    sv = cfg.MODEL.SEGVIT
    if cfg.MODEL.SEM_SEG_HEAD.NAME == "ShrunkATMHead":
        return sv.LAYERS_PER_STAGE - 1
    return sv.NUM_STAGES - 1
