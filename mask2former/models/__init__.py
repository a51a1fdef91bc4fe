"""Model families, one subpackage each; importing this registers all of their components.

- ``mask2former``: the MaskFormer meta-architecture, its head, pixel decoders and the
  masked-attention transformer decoder (with its variant interface).
- ``mp_former``: MP-Former's mask-piloted training, a variant plugged into Mask2Former's decoder
  and criterion.
"""

from . import fastinst, mask2former, mp_former, segvit, transfiner  # noqa: F401
