"""Parts shared by every model family of the package.

- ``matcher``: Hungarian matching of predicted and ground-truth masks (point-sampled costs).
- ``criterion``: the set criterion (class loss, point-sampled BCE and dice mask losses).
- ``postprocessing``: semantic, panoptic and instance inference of (class, mask) predictions.
- ``inference``: the one inference path: pre-processing (normalise and pad), the network
  contract and the post-processor object.
- ``position_encoding``: the sine positional encoding of 2-D maps.
- ``backbone``: backbones beyond Detectron2's (Swin).

A model family (``mask2former.models.<family>``) imports from here; nothing here imports a
family.
"""

from .backbone.swin import D2SwinTransformer  # noqa: F401  (registers the backbone)
