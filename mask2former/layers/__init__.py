from .folded_norm import FrozenNormFoldedConv2d, fold_frozen_batchnorm  # noqa: F401
from .ms_deform_attn import (  # noqa: F401
    MSDeformAttn,
    active_impl_of,
    ms_deform_attn,
    ms_deform_attn_impl,
    ms_deform_attn_pytorch,
)
