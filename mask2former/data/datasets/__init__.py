"""Built-in dataset registrations (official names, under ``$DETECTRON2_DATASETS``).

Importing this package registers every dataset; nothing is read from disk until a dataset is
loaded. Detectron2 itself registers COCO, ADE20K-150 semantic (``ade20k_sem_seg_*``) and
Cityscapes (``cityscapes_fine_*``), which are reused.
"""

from . import (  # noqa: F401  (registration side effects)
    register_ade20k_full,
    register_ade20k_instance,
    register_ade20k_panoptic,
    register_builtin_guards,
    register_coco_panoptic_annos_semseg,
    register_coco_stuff_10k,
    register_mapillary_vistas,
    register_mapillary_vistas_panoptic,
    register_synthetic,
)
