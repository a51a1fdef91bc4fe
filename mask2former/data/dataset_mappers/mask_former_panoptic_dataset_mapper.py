"""Training mapper for panoptic segmentation with the MaskFormer augmentation (ADE20K, Cityscapes,
Mapillary Vistas): the semantic mapper with one target per non-crowd panoptic segment."""

from __future__ import annotations

from .common import panoptic_targets
from .mask_former_semantic_dataset_mapper import MaskFormerSemanticDatasetMapper

__all__ = ["MaskFormerPanopticDatasetMapper"]


class MaskFormerPanopticDatasetMapper(MaskFormerSemanticDatasetMapper):
    """Map a Detectron2 panoptic record ("pan_seg_file_name", "segments_info" with contiguous
    category ids) to the MaskFormer training input.

    Output keys: "image", "instances" (gt_classes (N,), gt_masks (N, H, W) bool: one mask per
    non-crowd segment, things and stuff), and "sem_seg" when the record has "sem_seg_file_name".
    The panoptic masks are padded with 0 (void).
    """

    def _read_sem_seg(self, dataset_dict):
        if "sem_seg_file_name" not in dataset_dict:
            return None
        return super()._read_sem_seg(dataset_dict)

    def _targets(self, dataset_dict, transforms, sem_seg, original_shape, image_shape):
        return panoptic_targets(dataset_dict, transforms, image_shape, type(self).__name__)
