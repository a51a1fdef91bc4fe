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
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

from .modeling.inference import normalize_and_pad
from .modeling.postprocessing import semantic_inference

__all__ = ["MaskFormerWithTTA"]


class MaskFormerWithTTA(nn.Module):
    """Wraps a model that meets the inference contract
    (:class:`~mask2former.modeling.inference.InferenceModel`, e.g.
    :class:`~mask2former.models.mask2former.MaskFormer`) in eval mode for TTA."""

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
        postprocessor = self.model.postprocessor
        n = len(augmented)
        if not postprocessor.sem_seg_postprocess_before_inference:  # semantic only
            sem_seg = 0.0
            for x, flip in zip(augmented, flips):
                logits, masks, images = self._network(x)
                result = postprocessor(
                    logits, masks, padded_size=tuple(images.tensor.shape[-2:]),
                    image_sizes=images.image_sizes, output_sizes=[(x["height"], x["width"])],
                )[0]
                sem_seg = sem_seg + _unflip(result["sem_seg"], flip)  # (K, H, W)
            return {"sem_seg": sem_seg / n}

        cls_prob, mask_pred, sem_seg = 0.0, 0.0, 0.0
        for x, flip in zip(augmented, flips):
            mask_cls_i, mask_pred_i = self._raw_prediction(x)  # (Q, K+1), (Q, H, W)
            mask_pred_i = _unflip(mask_pred_i, flip)
            cls_prob = cls_prob + F.softmax(mask_cls_i, dim=-1)
            mask_pred = mask_pred + mask_pred_i
            if "semantic" in postprocessor.tasks:
                sem_seg = sem_seg + semantic_inference(mask_cls_i, mask_pred_i)
        # log of the mean probability: the post-processing's softmax gives the mean back.
        mask_cls = torch.log(cls_prob / n)  # (Q, K+1)
        mask_pred = mask_pred / n  # (Q, H, W)
        result = postprocessor.process_image(mask_cls, mask_pred, tasks=("panoptic", "instance"))
        if "semantic" in postprocessor.tasks:
            result["sem_seg"] = sem_seg / n
        return result

    def _network(self, inputs: dict):
        """The network outputs of one augmented image: pred_logits (1, Q, K+1), pred_masks
        (1, Q, h, w) and the padded batch (ImageList)."""
        model = self.model
        images = normalize_and_pad(
            [inputs["image"]], model.pixel_mean, model.pixel_std,
            size_divisibility=model.size_divisibility,
        )  # (1, 3, H_pad, W_pad)
        pred_logits, pred_masks = model.forward_network(images.tensor)
        return pred_logits, pred_masks, images

    def _raw_prediction(self, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits (Q, K+1) and mask logits (Q, height, width) of one augmented image."""
        pred_logits, pred_masks, images = self._network(inputs)
        mask_pred = self.model.postprocessor.resize_masks(
            pred_masks[0],
            tuple(images.tensor.shape[-2:]),
            images.image_sizes[0],
            (inputs["height"], inputs["width"]),
        )  # (Q, height, width)
        return pred_logits[0].to(mask_pred), mask_pred


def _unflip(x: torch.Tensor, flip: bool) -> torch.Tensor:
    """Undo a horizontal flip of a (..., H, W) map."""
    return x.flip(dims=[-1]) if flip else x
