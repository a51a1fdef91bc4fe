"""Training mapper for instance segmentation with the MaskFormer augmentation (ADE20K, Cityscapes):
the semantic mapper with a plain random crop and one target per non-crowd annotation."""

from __future__ import annotations

from .common import instance_targets
from .mask_former_semantic_dataset_mapper import MaskFormerSemanticDatasetMapper

__all__ = ["MaskFormerInstanceDatasetMapper"]


class MaskFormerInstanceDatasetMapper(MaskFormerSemanticDatasetMapper):
    """Map a Detectron2 instance record ("annotations" with polygon, RLE or bitmask
    "segmentation") to the MaskFormer training input.

    Output keys: "image" and "instances" (gt_classes (N,), gt_masks (N, H, W) bool). Crowd
    annotations are dropped; masks are padded with 0. No "sem_seg".
    """

    category_area_crop = False

    def _read_sem_seg(self, dataset_dict):
        return None

    def _targets(self, dataset_dict, transforms, sem_seg, original_shape, image_shape):
        return instance_targets(
            dataset_dict, transforms, original_shape, image_shape, type(self).__name__
        )
