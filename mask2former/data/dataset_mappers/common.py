"""Pieces shared by the training dataset mappers: augmentation lists and target packing."""

from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.data import transforms as T
from detectron2.projects.point_rend import ColorAugSSDTransform
from detectron2.structures import Boxes, Instances, polygons_to_bitmask

from ..utils import read_image_checked, rgb2id

__all__ = [
    "build_lsj_augmentation",
    "build_maskformer_augmentation",
    "segmentation_to_mask",
    "masks_to_instances",
    "pad_to_fixed_size",
    "transform_segmentation",
    "instance_targets",
    "panoptic_targets",
]


def build_lsj_augmentation(cfg) -> list[T.Augmentation]:
    """Large-scale jitter of the COCO "new baseline": flip, ResizeScale, FixedSizeCrop.

    The crop pads images with 128 and segmentations with 0, so a padded panoptic pixel reads as
    id 0 (void) and the padding mask can be recovered from a transformed map of ones.
    """
    size = cfg.INPUT.IMAGE_SIZE
    augs: list[T.Augmentation] = []
    if cfg.INPUT.RANDOM_FLIP != "none":
        augs.append(
            T.RandomFlip(
                horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                vertical=cfg.INPUT.RANDOM_FLIP == "vertical",
            )
        )
    augs += [
        T.ResizeScale(
            min_scale=cfg.INPUT.MIN_SCALE,
            max_scale=cfg.INPUT.MAX_SCALE,
            target_height=size,
            target_width=size,
        ),
        T.FixedSizeCrop(crop_size=(size, size), pad_value=128.0, seg_pad_value=0),
    ]
    return augs


def build_maskformer_augmentation(cfg, category_area_crop: bool = True) -> list[T.Augmentation]:
    """MaskFormer augmentation: ResizeShortestEdge -> crop -> optional SSD colour jitter -> flip.

    ``category_area_crop`` picks RandomCrop_CategoryAreaConstraint (semantic and panoptic
    mappers) or a plain RandomCrop (instance mapper).
    """
    augs: list[T.Augmentation] = [
        T.ResizeShortestEdge(
            cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
        )
    ]
    if cfg.INPUT.CROP.ENABLED:
        if category_area_crop:
            augs.append(
                T.RandomCrop_CategoryAreaConstraint(
                    cfg.INPUT.CROP.TYPE,
                    cfg.INPUT.CROP.SIZE,
                    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
                    cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
                )
            )
        else:
            augs.append(T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
    if cfg.INPUT.COLOR_AUG_SSD:
        augs.append(ColorAugSSDTransform(img_format=cfg.INPUT.FORMAT))
    augs.append(T.RandomFlip())
    return augs


def segmentation_to_mask(segm, height: int, width: int) -> np.ndarray:
    """Rasterize a Detectron2 "segmentation" (polygons, COCO RLE or (H, W) array) to a bool mask."""
    if isinstance(segm, list):
        return polygons_to_bitmask(segm, height, width)  # (H, W) bool
    if isinstance(segm, dict):
        if isinstance(segm.get("counts"), list):  # uncompressed RLE
            segm = mask_util.frPyObjects(segm, *segm["size"])
        return mask_util.decode(segm).astype(bool)  # (H, W)
    if isinstance(segm, np.ndarray):
        if segm.ndim != 2:
            raise ValueError(f"A mask segmentation must be 2-D (H, W), got shape {segm.shape}")
        return segm.astype(bool)
    raise ValueError(
        f"Cannot convert segmentation of type {type(segm).__name__} to a mask; expected polygons "
        "(list of lists), COCO RLE (dict) or an (H, W) array"
    )


def masks_to_instances(
    image_shape: tuple[int, int], classes: list[int], masks: list[np.ndarray], with_boxes: bool
) -> Instances:
    """Pack per-segment masks into ``Instances`` with gt_classes (N,), gt_masks (N, H, W) bool.

    With ``with_boxes`` also gt_boxes (N, 4) XYXY, the tight boxes of the masks. An empty list
    gives valid empty fields: gt_masks (0, H, W).
    """
    h, w = image_shape
    instances = Instances((h, w))
    instances.gt_classes = torch.tensor(classes, dtype=torch.int64)  # (N,)
    if masks:
        gt_masks = torch.stack([torch.from_numpy(np.ascontiguousarray(m)) for m in masks])
        gt_masks = gt_masks.to(torch.bool)  # (N, H, W)
    else:
        gt_masks = torch.zeros((0, h, w), dtype=torch.bool)  # (0, H, W)
    instances.gt_masks = gt_masks
    if with_boxes:
        boxes = torch.zeros((len(masks), 4), dtype=torch.float32)  # (N, 4) XYXY
        for i, m in enumerate(gt_masks):
            ys = torch.where(m.any(dim=1))[0]
            xs = torch.where(m.any(dim=0))[0]
            if len(xs) and len(ys):
                boxes[i] = torch.tensor([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1])
        instances.gt_boxes = Boxes(boxes)
    return instances


def pad_to_fixed_size(array: np.ndarray, size: int, value) -> np.ndarray:
    """Pad the first two dims (H, W) of ``array`` at the bottom/right up to ``size``; never crop."""
    h, w = array.shape[:2]
    if h >= size and w >= size:
        return array
    pad = [(0, max(size - h, 0)), (0, max(size - w, 0))] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pad, mode="constant", constant_values=value)  # (size, size, ...)


def _require(dataset_dict: dict, keys: tuple[str, ...], who: str) -> None:
    missing = [k for k in keys if k not in dataset_dict]
    if missing:
        raise ValueError(
            f"Record for image '{dataset_dict.get('file_name')}' has no {missing}; {who} needs them"
        )


def transform_segmentation(segm, transforms, original_shape, image_shape) -> np.ndarray:
    """Apply geometric ``transforms`` to one annotation "segmentation" -> (H, W) bool mask.

    Polygons are transformed as points and rasterized at the output size (clipping happens in
    the rasterization, so no polygon-clipping library is needed); RLE and bitmasks are rasterized
    at the original size and transformed as label maps.
    """
    if isinstance(segm, list):
        polygons = [
            transforms.apply_coords(np.asarray(p, dtype=np.float64).reshape(-1, 2)).reshape(-1)
            for p in segm
        ]
        return polygons_to_bitmask(polygons, *image_shape)  # (H, W)
    mask = segmentation_to_mask(segm, *original_shape).astype(np.uint8)  # (H0, W0)
    return transforms.apply_segmentation(mask).astype(bool)  # (H, W)


def instance_targets(dataset_dict: dict, transforms, original_shape, image_shape, who: str):
    """(classes, masks) of the non-crowd "annotations" of a record, after ``transforms``.

    ``original_shape``/``image_shape`` are the (H, W) before/after the transforms. Pops
    "annotations". ``who`` names the caller in errors.
    """
    _require(dataset_dict, ("annotations",), who)
    classes, masks = [], []
    for obj in dataset_dict.pop("annotations"):
        if obj.get("iscrowd", 0):
            continue
        if "segmentation" not in obj:
            raise ValueError(
                f"An annotation of '{dataset_dict['file_name']}' has no 'segmentation'; "
                f"{who} needs polygons, RLE or a bitmask"
            )
        classes.append(int(obj["category_id"]))
        masks.append(
            transform_segmentation(obj["segmentation"], transforms, original_shape, image_shape)
        )
    return classes, masks


def panoptic_targets(dataset_dict: dict, transforms, image_shape, who: str):
    """(classes, masks) of the non-crowd segments of a panoptic record, after ``transforms``.

    Reads "pan_seg_file_name" (COCO panoptic PNG; pixels added by padding read as id 0, void) and
    uses "segments_info" with contiguous "category_id". Pops "pan_seg_file_name".
    """
    _require(dataset_dict, ("pan_seg_file_name", "segments_info"), who)
    pan_path = dataset_dict.pop("pan_seg_file_name")
    pan_rgb = read_image_checked(pan_path, format="RGB")  # (H0, W0, 3) colour-coded ids
    pan_seg = rgb2id(transforms.apply_segmentation(pan_rgb))  # (H, W) segment ids
    if pan_seg.shape != tuple(image_shape):
        raise ValueError(
            f"Panoptic map '{pan_path}' does not match the size of '{dataset_dict['file_name']}'"
        )
    classes, masks = [], []
    for segment in dataset_dict["segments_info"]:
        if not segment.get("iscrowd", 0):
            classes.append(int(segment["category_id"]))
            masks.append(pan_seg == segment["id"])
    return classes, masks
