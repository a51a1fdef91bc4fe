from .ms_deform_attn import (  # noqa: F401
    MSDeformAttn,
    active_impl_of,
    ms_deform_attn,
    ms_deform_attn_impl,
    ms_deform_attn_pytorch,
)
