"""Base of the large-scale-jitter ("new baseline") COCO mappers: shared reading and augmentation."""

from __future__ import annotations

import copy
import logging

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from ..utils import read_image_checked
from .common import build_lsj_augmentation, masks_to_instances

__all__ = ["LSJDatasetMapper"]

logger = logging.getLogger(__name__)


class LSJDatasetMapper:
    """Read an image, apply flip -> ResizeScale -> FixedSizeCrop, and build "instances".

    Output keys: "image" (3, S, S) uint8, "padding_mask" (S, S) bool (True on padded pixels) and,
    in training, "instances" with gt_classes (N,), gt_masks (N, S, S) bool and gt_boxes (N, 4)
    XYXY boxes of the masks (zeros for an empty mask). Subclasses implement :meth:`_targets`,
    which also decides whether masks emptied by the crop are kept.
    """

    @configurable
    def __init__(self, is_train: bool = True, *, augmentations: list, image_format: str):
        """
        Args:
            is_train: when False only "image" and "padding_mask" are produced.
            augmentations: Detectron2 augmentations (see ``build_lsj_augmentation``).
            image_format: "RGB" or "BGR".
        """
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        logger.info(f"[{type(self).__name__}] augmentations: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        return {
            "is_train": is_train,
            "augmentations": build_lsj_augmentation(cfg),
            "image_format": cfg.INPUT.FORMAT,
        }

    def _targets(self, dataset_dict, transforms, original_shape, image_shape):
        """(classes, (S, S) bool masks) of the record after ``transforms``; ``original_shape``
        and ``image_shape`` are the (H, W) before and after. Every returned mask becomes a
        target, empty or not."""
        raise NotImplementedError

    def __call__(self, dataset_dict: dict) -> dict:
        dataset_dict = copy.deepcopy(dataset_dict)  # modified below
        image = read_image_checked(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        original_shape = image.shape[:2]
        ones = np.ones(original_shape, dtype=np.uint8)  # (H0, W0)

        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        image_shape = image.shape[:2]
        # The crop pads segmentations with 0, so padded pixels are the zeros of this map.
        padding_mask = transforms.apply_segmentation(ones) == 0  # (S, S)

        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        dataset_dict["padding_mask"] = torch.as_tensor(np.ascontiguousarray(padding_mask))
        if not self.is_train:
            dataset_dict.pop("annotations", None)
            return dataset_dict

        classes, masks = self._targets(dataset_dict, transforms, original_shape, image_shape)
        dataset_dict["instances"] = masks_to_instances(image_shape, classes, masks, with_boxes=True)
        dataset_dict.pop("annotations", None)
        dataset_dict.pop("segments_info", None)
        return dataset_dict
