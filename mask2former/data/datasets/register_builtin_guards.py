"""Give the Detectron2 built-in datasets Mask2Former uses the same clear missing-folder error.

Detectron2 already registers COCO, ADE20K-150 semantic and Cityscapes; they are reused as they
are, with only a path check placed in front of their loaders.
"""

from __future__ import annotations

from .common import guard_registered

_GUARDS = {
    "coco_2017_{}": ("image_root", "json_file"),
    "coco_2017_{}_panoptic": ("image_root", "panoptic_root", "panoptic_json"),
    "ade20k_sem_seg_{}": ("image_root", "sem_seg_root"),
    "cityscapes_fine_instance_seg_{}": ("image_dir", "gt_dir"),
    "cityscapes_fine_sem_seg_{}": ("image_dir", "gt_dir"),
    "cityscapes_fine_panoptic_{}": ("image_root", "panoptic_root", "panoptic_json"),
}

for _pattern, _keys in _GUARDS.items():
    for _split in ("train", "val"):
        guard_registered(_pattern.format(_split), _keys)
