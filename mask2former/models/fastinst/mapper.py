"""FastInst's training mapper (official ``INPUT.DATASET_MAPPER_NAME`` "fastinst_instance").

Resize the short side to one of ``INPUT.MIN_SIZE_TRAIN`` (long side <= ``MAX_SIZE_TRAIN``),
optional SSD colour jitter, random flip; with probability 0.5, first resize the short side to
one of ``INPUT.CROP.RESIZE.MIN_SIZE`` and random-crop (``INPUT.CROP.TYPE`` / ``SIZE``). Crowd
objects are dropped. Not yet in ``mask2former.data.dataset_mappers.build.MAPPERS`` (a shared
file): until it is, the official COCO configs train with another mapper only.
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.projects.point_rend import ColorAugSSDTransform

from ...data.dataset_mappers.common import instance_targets, masks_to_instances
from ...data.utils import read_image_checked
from ...modeling.inference import round_up_to_divisor

__all__ = ["FastInstInstanceDatasetMapper"]

logger = logging.getLogger(__name__)


class FastInstInstanceDatasetMapper:
    """Detectron2 instance record -> {"image" (3, H, W) uint8, "instances" (gt_classes (N,),
    gt_masks (N, H, W) bool)}.

    Args:
        is_train: must be True (a training mapper).
        crop_augmentations: applied first, to half of the images.
        augmentations: applied to every image.
        image_format: format of :func:`read_image_checked`.
        size_divisibility: > 0: pad image (with 128) and masks (with 0) at the bottom/right to a
            multiple of it (the official mapper pads to the divisor itself, a bug).
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        crop_augmentations: list[T.Augmentation],
        augmentations: list[T.Augmentation],
        image_format: str,
        size_divisibility: int,
    ):
        if not is_train:
            raise ValueError("FastInstInstanceDatasetMapper is a training mapper (is_train=True)")
        self.crop_augmentations = crop_augmentations
        self.augmentations = augmentations
        self.image_format = image_format
        self.size_divisibility = size_divisibility
        logger.info("[FastInstInstanceDatasetMapper] augmentations: %s; with prob. 0.5 first: %s",
                    augmentations, crop_augmentations)

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> dict:
        augs: list[T.Augmentation] = [T.ResizeShortestEdge(
            cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
        )]
        if cfg.INPUT.COLOR_AUG_SSD:
            augs.append(ColorAugSSDTransform(img_format=cfg.INPUT.FORMAT))
        augs.append(T.RandomFlip())
        crop_augs: list[T.Augmentation] = []
        if cfg.INPUT.CROP.ENABLED:
            resize = cfg.INPUT.CROP.RESIZE
            if resize.ENABLED:
                crop_augs.append(T.ResizeShortestEdge(
                    resize.MIN_SIZE, sample_style=resize.MIN_SIZE_TRAIN_SAMPLING
                ))
            crop_augs.append(T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
        return {
            "is_train": is_train,
            "crop_augmentations": crop_augs,
            "augmentations": augs,
            "image_format": cfg.INPUT.FORMAT,
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
        }

    def __call__(self, dataset_dict: dict) -> dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_image_checked(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        original_shape = image.shape[:2]
        augs = self.augmentations
        if np.random.rand() <= 0.5:
            augs = self.crop_augmentations + augs
        aug_input = T.AugInput(image)
        transforms = T.AugmentationList(augs)(aug_input)
        image = aug_input.image  # (H, W, 3)
        classes, masks = instance_targets(
            dataset_dict, transforms, original_shape, image.shape[:2], type(self).__name__
        )
        h, w = image.shape[:2]
        if self.size_divisibility > 0:
            ph, pw = round_up_to_divisor((h, w), self.size_divisibility)
            image = np.pad(image, ((0, ph - h), (0, pw - w), (0, 0)), constant_values=128)
            masks = [np.pad(m, ((0, ph - h), (0, pw - w))) for m in masks]  # (H', W') each
        image_t = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))  # (3, H', W')
        instances = masks_to_instances(image.shape[:2], classes, masks, with_boxes=False)
        dataset_dict["image"] = image_t
        dataset_dict["instances"] = instances
        return dataset_dict
