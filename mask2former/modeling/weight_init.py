"""Weight initialisation shared by the transformer parts of several families."""

from timm.layers import trunc_normal_
from torch import nn

__all__ = ["init_linear_and_layernorm"]


def init_linear_and_layernorm(module: nn.Module) -> None:
    """One module (use with ``model.apply``): Linear weights truncated normal (std 0.02) and
    biases 0; LayerNorm weights 1 and biases 0. Other modules are left alone."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
