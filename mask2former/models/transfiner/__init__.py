"""Mask Transfiner (Ke et al., CVPR 2022): quadtree mask refinement on Mask R-CNN.

Importing this registers the meta-architecture ``TransfinerRCNN`` (``GeneralizedRCNN`` with
the Predictor's ``size_divisibility``), ``TransfinerROIHeads`` (``ROI_HEADS_REGISTRY``),
``TransfinerMaskHead`` (``ROI_MASK_HEAD_REGISTRY``) and the ResNet-FPN backbone whose
deformable convolutions run through ``torchvision.ops.deform_conv2d``
(``build_resnet_fpn_backbone_tvdcn``, in ``BACKBONE_REGISTRY``).

Modules: ``config`` (keys), ``pooler`` (RoI feature pyramid), ``mask_head`` (coarse head,
incoherence detector, losses, inference), ``quadtree`` (node selection, sequences, level-by-level
assembly), ``encoder`` (node encoder, transformer, pixel decoder), ``targets`` / ``loss``
(training targets), ``roi_heads``, ``backbone`` (DCN by torchvision), ``meta_arch``,
``evaluation`` (Mask AP, Boundary AP).

It registers Detectron2's ``DatasetMapper`` as the training mapper "rcnn" (the configs'
``INPUT.DATASET_MAPPER_NAME``) and its evaluator for COCO-format datasets.
"""

from detectron2.data import DatasetMapper

from ...data.dataset_mappers.build import register_train_mapper
from ...evaluation import register_coco_evaluator
from .backbone import build_resnet_fpn_backbone_tvdcn  # noqa: F401
from .config import add_transfiner_config  # noqa: F401
from .evaluation import build_transfiner_evaluator
from .mask_head import TransfinerMaskHead  # noqa: F401
from .meta_arch import TransfinerRCNN  # noqa: F401
from .roi_heads import TransfinerROIHeads  # noqa: F401

register_train_mapper(
    "rcnn", DatasetMapper, task="instance", classes_key="thing_classes",
    num_classes_key="MODEL.ROI_HEADS.NUM_CLASSES",
)
register_coco_evaluator("TransfinerRCNN", build_transfiner_evaluator)
