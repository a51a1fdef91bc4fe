from .ms_deform_attn import MSDeformAttn, ms_deform_attn, ms_deform_attn_pytorch  # noqa: F401
