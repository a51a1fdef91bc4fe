"""The variant interface of the masked-attention transformer decoder.

A *variant* changes how Mask2Former is trained without copying its decoder or criterion
(MP-Former is one: ``mask2former.models.mp_former``). It plugs in through five points:

1. **extra queries** (:class:`ExtraQueries`): content and positions (E, B, C), placed before
   the decoder's Q queries for one training iteration;
2. a **self-attention mask** over the E + Q queries;
3. a **cross-attention-mask hook**, called at every layer with the mask the predictions made;
4. a **split of the outputs**: the decoder returns the Q queries' predictions as usual and the
   E extra ones under :attr:`DecoderVariant.output_key`, with :attr:`ExtraQueries.info`;
5. **extra losses** (:class:`VariantLoss`), computed by the meta-architecture from those
   outputs with the shared criterion, weighted by :attr:`VariantLoss.weight_dict`.

The decoder builds its variant with :func:`build_decoder_variant`: every builder registered in
:data:`DECODER_VARIANT_REGISTRY` is asked, and each reads its own config keys and returns a
variant or None. A variant's checkpoint-key rules (e.g. reading another code base's names)
are functions registered with :func:`register_state_dict_adapter`; the decoder runs them
when loading. The decoder imports nothing from any variant.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from detectron2.utils.registry import Registry
from torch import nn

__all__ = [
    "DECODER_VARIANT_REGISTRY",
    "CrossAttnMaskFn",
    "DecoderVariant",
    "ExtraQueries",
    "VariantLoss",
    "adapt_state_dict",
    "build_decoder_variant",
    "register_state_dict_adapter",
]

logger = logging.getLogger(__name__)

DECODER_VARIANT_REGISTRY = Registry("DECODER_VARIANT")
DECODER_VARIANT_REGISTRY.__doc__ = """
Builders of decoder variants, called as ``builder(cfg)``; each returns a
:class:`DecoderVariant` when its config switches it on, else None.
"""

# Hook rewriting a layer's cross-attention mask: ``fn(layer_index, attn_mask, (H_l, W_l))``
# with attn_mask (B*heads, E+Q, H_l*W_l) bool (True = not allowed); returns the same shape.
CrossAttnMaskFn = Callable[[int, torch.Tensor, tuple[int, int]], torch.Tensor]

# Checkpoint-key rule: ``fn(decoder, state_dict, prefix)`` edits the decoder's keys in place.
StateDictAdapter = Callable[[nn.Module, dict, str], None]
_STATE_DICT_ADAPTERS: list[StateDictAdapter] = []


@dataclass
class ExtraQueries:
    """The extra queries of one training iteration, placed before the decoder's Q queries.

    Attributes:
        content: (E, B, C) query content.
        pos: (E, B, C) query positions, or None (zeros when the decoder has query positions).
        self_attn_mask: (E+Q, E+Q) or (B*heads, E+Q, E+Q) bool, True = blocked, or None.
        cross_attn_mask_fn: per-layer hook on the cross-attention mask, or None.
        info: passed on unchanged with the extra outputs (e.g. a fixed assignment).
    """

    content: torch.Tensor
    pos: torch.Tensor | None = None
    self_attn_mask: torch.Tensor | None = None
    cross_attn_mask_fn: CrossAttnMaskFn | None = None
    info: dict = field(default_factory=dict)

    @property
    def num(self) -> int:
        """E."""
        return self.content.shape[0]


class DecoderVariant(nn.Module):
    """Base class of decoder variants; a submodule ``variant`` of the decoder.

    Subclasses implement :meth:`extra_queries` and set :attr:`loss`. Their parameters are
    saved under ``<decoder>.variant.``. Used in training only: at inference, or without
    targets, the decoder never calls the variant.
    """

    #: key of the extra queries' outputs in the decoder's output dict
    output_key = "variant_outputs"

    def __init__(self, *, loss: VariantLoss | None = None):
        super().__init__()
        self.loss = loss  # a plain attribute, not a submodule: losses hold no weights

    def extra_queries(
        self, targets: list[dict], level_sizes: list[tuple[int, int]], num_queries: int
    ) -> ExtraQueries | None:
        """The extra queries of this batch, or None when the variant has nothing to add.

        Args:
            targets: per image "labels" (n_b,) int64 and "masks" (n_b, H, W) at the padded
                input size.
            level_sizes: (H_l, W_l) of the memory levels, in the order the layers read them.
            num_queries: Q.
        """
        raise NotImplementedError

    def empty_outputs(self) -> dict:
        """Extra outputs of an iteration without extra queries: ``{"skipped": True, "zero": z}``
        where ``z`` is a zero connected to every parameter of the variant (so that DDP sees
        them used)."""
        params = list(self.parameters())
        zero = sum(p.sum() * 0.0 for p in params) if params else torch.zeros(())
        return {"skipped": True, "zero": zero}


class VariantLoss:
    """Extra losses of a variant, computed from the decoder's extra outputs.

    Attributes:
        output_key: the decoder output the losses read (:attr:`DecoderVariant.output_key`).
        weight_dict: loss name -> weight; the meta-architecture keeps only these names.
    """

    output_key = "variant_outputs"

    def __init__(self, *, weight_dict: dict[str, float]):
        self.weight_dict = dict(weight_dict)

    def __call__(self, criterion: nn.Module, outputs: dict, targets: list[dict]) -> dict:
        """Unweighted losses keyed by names of :attr:`weight_dict`.

        Args:
            criterion: the shared set criterion of the matching queries.
            outputs: the decoder's ``outputs[output_key]``.
            targets: per image "labels" (n_b,) and "masks" (n_b, H, W).
        """
        raise NotImplementedError


def build_decoder_variant(cfg) -> DecoderVariant | None:
    """The variant switched on by ``cfg``, or None. At most one may be on.

    The variant's weights are initialised without advancing the global random generator, so
    that every other weight of a model built with one seed is the same with and without it.
    """
    with torch.random.fork_rng(devices=[]):
        built = {name: builder(cfg) for name, builder in DECODER_VARIANT_REGISTRY}
    built = {name: variant for name, variant in built.items() if variant is not None}
    if len(built) > 1:
        raise ValueError(f"Only one decoder variant can be on at a time, got {sorted(built)}")
    return next(iter(built.values()), None)


def register_state_dict_adapter(fn: StateDictAdapter) -> StateDictAdapter:
    """Register a checkpoint-key rule run by the decoder before it loads (usable as a
    decorator)."""
    _STATE_DICT_ADAPTERS.append(fn)
    return fn


def adapt_state_dict(decoder: nn.Module, state_dict: dict, prefix: str) -> None:
    """Run every registered checkpoint-key rule on the decoder's keys (under ``prefix``)."""
    for fn in _STATE_DICT_ADAPTERS:
        fn(decoder, state_dict, prefix)
