"""Test-time augmentation (multi-scale + horizontal flip) for semantic, panoptic and instance.

Augmentations are Detectron2's :class:`DatasetMapperTTA`: the image is resized so that its short
side is each of ``TEST.AUG.MIN_SIZES`` (long side at most ``TEST.AUG.MAX_SIZE``), each also
flipped when ``TEST.AUG.FLIP``.

- Semantic only: the mean of the model's ``sem_seg`` scores over the augmentations (as the
  official ``SemanticSegmentorWithTTA``).
- Panoptic / instance: per augmentation the raw prediction of the last decoder layer, with the
  mask logits resized to the output size and flipped back; class probabilities and mask logits
  are averaged per query (the queries are the same learned set in every augmentation), and
  the average is post-processed once. ``sem_seg`` is then the mean of the per-augmentation
  semantic scores.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from detectron2.data.detection_utils import read_image
from detectron2.data.transforms import HFlipTransform
from detectron2.modeling import DatasetMapperTTA
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

from .modeling.postprocessing import instance_inference, panoptic_inference, semantic_inference

__all__ = ["MaskFormerWithTTA"]


class MaskFormerWithTTA(nn.Module):
    """Wraps a :class:`~mask2former.maskformer_model.MaskFormer` in eval mode for TTA."""

    def __init__(self, cfg, model: nn.Module, tta_mapper=None):
        super().__init__()
        if isinstance(model, DistributedDataParallel):
            model = model.module
        self.cfg = cfg.clone()
        self.model = model
        self.tta_mapper = DatasetMapperTTA(cfg) if tta_mapper is None else tta_mapper
        self.input_format = cfg.INPUT.FORMAT

    def forward(self, batched_inputs: list[dict]) -> list[dict]:
        """Same inputs and outputs as the wrapped model's inference."""
        return [self._inference_one_image(self._with_image(x)) for x in batched_inputs]

    def _with_image(self, dataset_dict: dict) -> dict:
        """The input with "image" (read from "file_name" if absent), "height" and "width"."""
        ret = copy.copy(dataset_dict)
        if "image" not in ret:
            image = read_image(ret.pop("file_name"), self.input_format)  # (H, W, C)
            ret["image"] = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        ret.setdefault("height", ret["image"].shape[1])
        ret.setdefault("width", ret["image"].shape[2])
        return ret

    @torch.no_grad()
    def _inference_one_image(self, inputs: dict) -> dict:
        augmented = self.tta_mapper(inputs)
        flips = [any(isinstance(t, HFlipTransform) for t in x.pop("transforms")) for x in augmented]
        model = self.model
        if not (model.panoptic_on or model.instance_on):
            sem_seg = sum(
                _unflip(model([x])[0]["sem_seg"], flip) for x, flip in zip(augmented, flips)
            )  # (K, H, W)
            return {"sem_seg": sem_seg / len(augmented)}

        cls_prob, mask_pred, sem_seg = 0.0, 0.0, 0.0
        for x, flip in zip(augmented, flips):
            mask_cls_i, mask_pred_i = self._raw_prediction(x)  # (Q, K+1), (Q, H, W)
            mask_pred_i = _unflip(mask_pred_i, flip)
            cls_prob = cls_prob + F.softmax(mask_cls_i, dim=-1)
            mask_pred = mask_pred + mask_pred_i
            if model.semantic_on:
                sem_seg = sem_seg + semantic_inference(mask_cls_i, mask_pred_i)
        n = len(augmented)
        # log of the mean probability: the post-processing's softmax gives the mean back.
        mask_cls = torch.log(cls_prob / n)  # (Q, K+1)
        mask_pred = mask_pred / n  # (Q, H, W)

        num_classes = model.sem_seg_head.num_classes
        result = {}
        if model.semantic_on:
            result["sem_seg"] = sem_seg / n
        if model.panoptic_on:
            result["panoptic_seg"] = panoptic_inference(
                mask_cls, mask_pred, num_classes=num_classes,
                object_mask_threshold=model.object_mask_threshold,
                overlap_threshold=model.overlap_threshold, thing_ids=model.thing_ids,
            )
        if model.instance_on:
            result["instances"] = instance_inference(
                mask_cls, mask_pred, num_classes=num_classes,
                test_topk_per_image=model.test_topk_per_image,
                thing_ids=model.thing_ids if model.panoptic_on else None,
                image_size=tuple(mask_pred.shape[-2:]),
            )
        return result

    def _raw_prediction(self, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Last-layer class logits (Q, K+1) and mask logits (Q, height, width) of one image."""
        model = self.model
        image = (inputs["image"].to(model.device) - model.pixel_mean) / model.pixel_std
        images = ImageList.from_tensors([image], model.size_divisibility)  # (1, C, H, W)
        outputs = model.sem_seg_head(model.backbone(images.tensor))
        mask_pred = F.interpolate(
            outputs["pred_masks"], size=images.tensor.shape[-2:], mode="bilinear",
            align_corners=False,
        )[0]  # (Q, H_pad, W_pad)
        mask_pred = sem_seg_postprocess(
            mask_pred, images.image_sizes[0], inputs["height"], inputs["width"]
        )  # (Q, height, width)
        return outputs["pred_logits"][0].to(mask_pred), mask_pred


def _unflip(x: torch.Tensor, flip: bool) -> torch.Tensor:
    """Undo a horizontal flip of a (..., H, W) map."""
    return x.flip(dims=[-1]) if flip else x
