"""Training mapper for semantic segmentation (ADE20K, Cityscapes, Mapillary Vistas, COCO-Stuff).

It is also the base of the MaskFormer panoptic and instance mappers: they share the reading,
augmentation, padding and packing, and override how the per-segment targets are made.
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from ..utils import read_image_checked, read_label_map
from .common import build_maskformer_augmentation, masks_to_instances, pad_to_fixed_size

__all__ = ["MaskFormerSemanticDatasetMapper"]

logger = logging.getLogger(__name__)


class MaskFormerSemanticDatasetMapper:
    """Map a Detectron2 semantic record to the MaskFormer training input.

    Output keys: "image" (3, H, W) uint8, "sem_seg" (H, W) int64, "instances" with one binary
    mask per class present (ignore excluded): gt_classes (N,), gt_masks (N, H, W) bool.
    When ``size_divisibility`` > 0, image and labels are padded up to that fixed size (image with
    128, sem_seg with ``ignore_label``).
    """

    # Subclasses pick a plain RandomCrop instead of the category-area crop.
    category_area_crop = True

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: list,
        image_format: str,
        ignore_label: int,
        size_divisibility: int,
    ):
        """
        Args:
            is_train: must be True; these mappers are for training only.
            augmentations: Detectron2 augmentations applied to image and labels.
            image_format: "RGB" or "BGR" (see ``read_image_checked``).
            ignore_label: label value excluded from the targets, also the label padding value.
            size_divisibility: pad up to this fixed size when > 0 (not to a multiple of it).
        """
        if not is_train:
            raise ValueError(f"{type(self).__name__} is a training mapper; is_train must be True")
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.ignore_label = ignore_label
        self.size_divisibility = size_divisibility
        logger.info(f"[{type(self).__name__}] augmentations: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        meta = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]) if cfg.DATASETS.TRAIN else None
        default_ignore = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
        return {
            "is_train": is_train,
            "augmentations": build_maskformer_augmentation(cfg, cls.category_area_crop),
            "image_format": cfg.INPUT.FORMAT,
            "ignore_label": meta.get("ignore_label", default_ignore) if meta else default_ignore,
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
        }

    # ------------------------------------------------------------------ hooks for subclasses
    def _read_sem_seg(self, dataset_dict: dict) -> np.ndarray | None:
        """The (H, W) label map the augmentations see (and that is returned as "sem_seg")."""
        if "sem_seg_file_name" not in dataset_dict:
            raise ValueError(
                f"Record for image '{dataset_dict.get('file_name')}' has no 'sem_seg_file_name'; "
                f"{type(self).__name__} needs it"
            )
        sem_seg = read_label_map(dataset_dict.pop("sem_seg_file_name"), "Semantic label map")
        # Transforms are not implemented for uint16, so work in float64 (exact for any label).
        return sem_seg.astype(np.float64)

    def _targets(self, dataset_dict, transforms, sem_seg, original_shape, image_shape):
        """Per-segment (classes, (H, W) bool masks) after augmentation; ``original_shape`` and
        ``image_shape`` are the (H, W) before and after. Here: one mask per class in sem_seg."""
        classes = [int(c) for c in np.unique(sem_seg) if c != self.ignore_label]
        return classes, [sem_seg == c for c in classes]

    # ------------------------------------------------------------------ mapping
    def __call__(self, dataset_dict: dict) -> dict:
        dataset_dict = copy.deepcopy(dataset_dict)  # modified below
        image = read_image_checked(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        sem_seg = self._read_sem_seg(dataset_dict)
        if sem_seg is not None and sem_seg.shape != image.shape[:2]:
            raise ValueError(
                f"Label map of '{dataset_dict['file_name']}' has size {sem_seg.shape}, "
                f"the image has {image.shape[:2]}"
            )

        original_shape = image.shape[:2]
        aug_input = T.AugInput(image, sem_seg=sem_seg)
        transforms = self.augmentations(aug_input)
        image, sem_seg = aug_input.image, aug_input.sem_seg
        if sem_seg is not None:
            sem_seg = sem_seg.astype(np.int64)  # (H, W)
        classes, masks = self._targets(
            dataset_dict, transforms, sem_seg, original_shape, image.shape[:2]
        )

        if self.size_divisibility > 0:
            size = self.size_divisibility
            image = pad_to_fixed_size(image, size, 128)  # (S, S, 3)
            if sem_seg is not None:
                sem_seg = pad_to_fixed_size(sem_seg, size, self.ignore_label)  # (S, S)
            masks = [pad_to_fixed_size(m, size, False) for m in masks]  # N x (S, S)

        dataset_dict.pop("annotations", None)
        dataset_dict.pop("segments_info", None)
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if sem_seg is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(np.ascontiguousarray(sem_seg))  # (H, W)
        dataset_dict["instances"] = masks_to_instances(
            image.shape[:2], classes, masks, with_boxes=False
        )
        return dataset_dict
