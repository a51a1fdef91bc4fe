"""FastInst (He et al., CVPR 2023): ResNet(-vd) -> PPM-FPN -> dual-path transformer decoder.

Importing this registers the meta-architecture (``FastInst``), the head (``FastInstHead``), the
pixel decoder (``PyramidPoolingModuleFPN``), the transformer decoder (``FastInstDecoder``, in
Mask2Former's transformer-decoder registry) and the backbone (``build_resnet_vd_backbone``).
The matcher, criterion and post-processing are the shared ones of ``mask2former.modeling``,
extended in ``criterion.py``. The training mapper of the official configs ("fastinst_instance")
is ``mapper.FastInstInstanceDatasetMapper``, registered here.
"""

from ...data.dataset_mappers.build import register_train_mapper
from .backbone import ResNetVd, build_resnet_vd_backbone  # noqa: F401
from .config import add_fastinst_config  # noqa: F401
from .criterion import FastInstCriterion, FastInstMatcher  # noqa: F401
from .decoder import FastInstDecoder  # noqa: F401
from .head import FastInstHead  # noqa: F401
from .mapper import FastInstInstanceDatasetMapper
from .meta_arch import FastInst  # noqa: F401
from .pixel_decoder import PyramidPoolingModuleFPN  # noqa: F401
from .query_proposal import QueryProposal  # noqa: F401

register_train_mapper(
    "fastinst_instance", FastInstInstanceDatasetMapper, task="instance", classes_key="thing_classes"
)
