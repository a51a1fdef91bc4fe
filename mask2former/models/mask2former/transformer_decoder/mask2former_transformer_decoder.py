"""Masked-attention multi-scale transformer decoder of Mask2Former.

Queries are sequence-first tensors (Q, B, C). Every layer reads one of the 3 pixel-decoder
levels in turn (layer i reads level i % 3) and runs masked cross-attention -> self-attention ->
FFN. Before the first layer and after every layer, a shared head predicts class logits and mask
logits; the mask logits, resized to the level read next and thresholded at 0.5, give the next
layer's cross-attention mask.

Training variants (MP-Former) plug in through the interface of ``..variant``: extra queries
placed before the Q learned ones, a self-attention mask, a per-layer cross-attention-mask hook,
and a split of the outputs. The forward pass is split into :meth:`_prepare_memory` (per-level
keys/values), :meth:`initial_queries` (learned queries), :meth:`decode` (the layer loop),
:meth:`forward_prediction_heads` and :meth:`format_outputs`.

Attention masks are boolean with ``nn.MultiheadAttention`` semantics: True = not allowed.
"""

import logging
from typing import NamedTuple

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d
from detectron2.utils.registry import Registry
from torch import nn

from ....modeling.position_encoding import PositionEmbeddingSine
from ..variant import (
    CrossAttnMaskFn,
    DecoderVariant,
    ExtraQueries,
    adapt_state_dict,
    build_decoder_variant,
)
from .layers import MLP, CrossAttentionLayer, FFNLayer, SelfAttentionLayer

logger = logging.getLogger(__name__)

TRANSFORMER_DECODER_REGISTRY = Registry("TRANSFORMER_MODULE")
TRANSFORMER_DECODER_REGISTRY.__doc__ = """
Registry for the transformer decoder of MaskFormer-style heads. Called as
``obj(cfg, in_channels, mask_classification)``; returns the prediction dict.
"""

QUERY_POS_OPTIONS = ("learned", "none")


def build_transformer_decoder(cfg, in_channels: int, mask_classification: bool = True):
    """Build the decoder named by ``cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME``."""
    name = cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME
    return TRANSFORMER_DECODER_REGISTRY.get(name)(cfg, in_channels, mask_classification)


def mask_logits_to_attn_mask(
    mask_logits: torch.Tensor, size: tuple[int, int], num_heads: int
) -> torch.Tensor:
    """Cross-attention mask from mask logits: pixels whose probability is below 0.5 are masked.

    Args:
        mask_logits: (B, Q, H, W).
        size: (h, w) of the memory level the mask is for (bilinear resize, align_corners False).
        num_heads: attention heads; the mask is repeated per head (index b * heads + head).

    Returns:
        (B*heads, Q, h*w) bool, True = not allowed, detached.
    """
    resized = F.interpolate(mask_logits, size=size, mode="bilinear", align_corners=False)
    return resized_logits_to_attn_mask(resized, num_heads)


def resized_logits_to_attn_mask(resized: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Cross-attention mask from mask logits (B, Q, h, w) already at the level's size:
    (B*heads, Q, h*w) bool, True (not allowed) where the probability is below 0.5, detached."""
    # (B, Q, h, w) -> (B, Q, h*w) -> (B, heads, Q, h*w) -> (B*heads, Q, h*w)
    masked = resized.sigmoid().flatten(2).unsqueeze(1).repeat(1, num_heads, 1, 1).flatten(0, 1)
    return (masked < 0.5).detach()


def unmask_fully_masked_rows(attn_mask: torch.Tensor) -> torch.Tensor:
    """A query whose mask hides every key attends everywhere instead: (..., Q, HW) bool."""
    return attn_mask & ~attn_mask.all(dim=-1, keepdim=True)


class DecoderMemory(NamedTuple):
    """Keys/values of the decoder, one entry per level (lowest resolution first)."""

    src: list[torch.Tensor]  # (H_l*W_l, B, C): projected features + level embedding
    pos: list[torch.Tensor]  # (H_l*W_l, B, C): sine positional encoding
    sizes: list[tuple[int, int]]  # (H_l, W_l)


@TRANSFORMER_DECODER_REGISTRY.register()
class MultiScaleMaskedTransformerDecoder(nn.Module):
    """Mask2Former's decoder: learned queries, masked attention over 3 levels in turn.

    Args:
        in_channels: channels of the input maps.
        mask_classification: predict class logits (``pred_logits``) besides masks.
        num_classes: K (the classifier has K + 1 outputs, the last is "no object").
        hidden_dim: width C of queries and memory.
        num_queries: Q.
        nheads: attention heads.
        dim_feedforward: FFN hidden width.
        dec_layers: number of decoder layers (the config's DEC_LAYERS minus 1).
        pre_norm: pre-norm layers instead of post-norm.
        mask_dim: channels of the mask features.
        enforce_input_project: add a 1x1 projection even when in_channels == hidden_dim.
        learned_query_pos: learned query positions (``query_embed``); False
            (``MODEL.MASK_FORMER.QUERY_POS "none"``, as the released MP-Former code): no
            positional embedding for any query.
        variant: a training variant (see ``..variant``), e.g. MP-Former's piloting, or None.
            Its weights are saved under ``variant.``.
    """

    _version = 2
    num_feature_levels = 3  # always 3 scales

    @configurable
    def __init__(
        self,
        in_channels: int,
        *,
        mask_classification: bool = True,
        num_classes: int,
        hidden_dim: int,
        num_queries: int,
        nheads: int,
        dim_feedforward: int,
        dec_layers: int,
        pre_norm: bool,
        mask_dim: int,
        enforce_input_project: bool,
        learned_query_pos: bool = True,
        variant: DecoderVariant | None = None,
    ):
        super().__init__()
        self.mask_classification = mask_classification
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)

        self.num_heads = nheads
        self.num_layers = dec_layers
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nheads, dropout=0.0, normalize_before=pre_norm)
            for _ in range(dec_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, nheads, dropout=0.0, normalize_before=pre_norm)
            for _ in range(dec_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward, dropout=0.0, normalize_before=pre_norm)
            for _ in range(dec_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)

        self.num_queries = num_queries
        self.query_feat = nn.Embedding(num_queries, hidden_dim)  # query content
        # query position; None when queries have no positional embedding
        self.query_embed = nn.Embedding(num_queries, hidden_dim) if learned_query_pos else None
        self.level_embed = nn.Embedding(self.num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(self.num_feature_levels):
            if in_channels != hidden_dim or enforce_input_project:
                proj = Conv2d(in_channels, hidden_dim, kernel_size=1)
                weight_init.c2_xavier_fill(proj)
                self.input_proj.append(proj)
            else:
                self.input_proj.append(nn.Sequential())  # identity, no parameters

        if mask_classification:
            self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)
        self.variant = variant

    @classmethod
    def from_config(cls, cfg, in_channels: int, mask_classification: bool):
        mf = cfg.MODEL.MASK_FORMER
        if mf.DEC_LAYERS < 1:
            raise ValueError(f"MODEL.MASK_FORMER.DEC_LAYERS must be >= 1, got {mf.DEC_LAYERS}")
        if mf.QUERY_POS not in QUERY_POS_OPTIONS:
            raise ValueError(
                f"MODEL.MASK_FORMER.QUERY_POS must be one of {QUERY_POS_OPTIONS}, "
                f"got {mf.QUERY_POS!r}"
            )
        return {
            "in_channels": in_channels,
            "mask_classification": mask_classification,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "hidden_dim": mf.HIDDEN_DIM,
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "nheads": mf.NHEADS,
            "dim_feedforward": mf.DIM_FEEDFORWARD,
            # DEC_LAYERS counts prediction points: the prediction from the learned queries
            # before the first layer is one of them.
            "dec_layers": mf.DEC_LAYERS - 1,
            "pre_norm": mf.PRE_NORM,
            "enforce_input_project": mf.ENFORCE_INPUT_PROJ,
            "mask_dim": cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
            "learned_query_pos": mf.QUERY_POS == "learned",
            "variant": build_decoder_variant(cfg),
        }

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        version = local_metadata.get("version", None)
        if version is None or version < 2:
            renamed = 0
            for k in [k for k in state_dict if k.startswith(prefix) and "static_query" in k]:
                state_dict[k.replace("static_query", "query_feat")] = state_dict.pop(k)
                renamed += 1
            if renamed:
                logger.warning(
                    f"Renamed {renamed} legacy keys of {type(self).__name__} "
                    "(static_query -> query_feat)."
                )
        adapt_state_dict(self, state_dict, prefix)
        embed_key = prefix + "query_embed.weight"
        if self.query_embed is None and state_dict.pop(embed_key, None) is not None:
            logger.info(f"Dropped {embed_key}: MODEL.MASK_FORMER.QUERY_POS is 'none'.")
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(
        self,
        x: list[torch.Tensor],
        mask_features: torch.Tensor,
        mask: torch.Tensor | None = None,
        targets: list[dict] | None = None,
    ) -> dict:
        """
        Args:
            x: 3 maps (B, in_channels, H_l, W_l), lowest resolution first.
            mask_features: (B, MASK_DIM, H/4, W/4).
            mask: ignored (padded pixels are attended, as in the official model).
            targets: training targets (per image "labels" (n,), "masks" (n, H, W)); used only
                by the variant, in training.

        Returns:
            ``pred_logits`` (B, Q, K+1) (with mask_classification), ``pred_masks``
            (B, Q, H/4, W/4) of the last prediction point, and ``aux_outputs``: the earlier
            prediction points (``dec_layers`` dicts, the first is before layer 0). With a
            variant in training also ``outputs[variant.output_key]``: the same for its E extra
            queries plus the entries of :attr:`ExtraQueries.info` (or the variant's
            ``empty_outputs()`` when it adds none).
        """
        del mask
        memory = self._prepare_memory(x)
        output, query_pos = self.initial_queries(mask_features.shape[0])
        if self.variant is None or not self.training or targets is None:
            return self.format_outputs(*self.decode(output, query_pos, memory, mask_features))
        extra = self.variant.extra_queries(targets, memory.sizes, self.num_queries)
        if extra is None:
            out = self.format_outputs(*self.decode(output, query_pos, memory, mask_features))
            out[self.variant.output_key] = self.variant.empty_outputs()
            return out
        return self._decode_with_extra(output, query_pos, memory, mask_features, extra)

    def forward_last(
        self, x: list[torch.Tensor], mask_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference: the last prediction point only, ``pred_logits`` (B, Q, K+1) and
        ``pred_masks`` (B, Q, H/4, W/4), as :meth:`forward` gives them (no variant runs in
        inference).

        The earlier prediction points serve only the next layer's cross-attention mask, which
        is the mask logits resized to that layer's level (1/32, 1/16 or 1/8). Resizing is
        linear and acts on each channel alone, so it commutes with the product of the mask
        embeddings and the mask features: the logits are computed at the level's size from
        the mask features resized once per level, Q*C*h*w multiply-adds instead of
        Q*C*(H/4)*(W/4) plus a resize of the Q full-size logits.

        Args:
            x: 3 maps (B, in_channels, H_l, W_l), lowest resolution first.
            mask_features: (B, MASK_DIM, H/4, W/4).
        """
        if not self.mask_classification:
            out = self.forward(x, mask_features)
            return out["pred_logits"], out["pred_masks"]
        memory = self._prepare_memory(x)
        output, query_pos = self.initial_queries(mask_features.shape[0])
        resized: dict[tuple[int, int], torch.Tensor] = {}  # (h, w) -> (B, MASK_DIM, h, w)

        def attn_mask_for(queries: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
            if size not in resized:
                resized[size] = F.interpolate(
                    mask_features, size=size, mode="bilinear", align_corners=False
                )
            mask_embed = self.mask_embed(self.decoder_norm(queries).transpose(0, 1))  # (B, Q, C)
            logits = torch.einsum("bqc,bchw->bqhw", mask_embed, resized[size])  # (B, Q, h, w)
            if logits.shape[0] == 1:
                # One image: every head has the same mask, given once as (Q, h*w) (the
                # attention broadcasts it over the heads instead of copying it 8 times).
                return resized_logits_to_attn_mask(logits, 1)[0]
            return resized_logits_to_attn_mask(logits, self.num_heads)  # (B*heads, Q, h*w)

        attn_mask = attn_mask_for(output, memory.sizes[0])
        for i in range(self.num_layers):
            level = i % self.num_feature_levels
            output = self.forward_layer(
                i,
                output,
                query_pos,
                memory.src[level],
                memory.pos[level],
                cross_attn_mask=attn_mask,
            )
            if i < self.num_layers - 1:
                attn_mask = attn_mask_for(output, memory.sizes[(i + 1) % self.num_feature_levels])
        decoder_output = self.decoder_norm(output).transpose(0, 1)  # (B, Q, C)
        mask_embed = self.mask_embed(decoder_output)  # (B, Q, MASK_DIM)
        pred_masks = torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features)
        return self.class_embed(decoder_output), pred_masks

    def _decode_with_extra(
        self,
        output: torch.Tensor,
        query_pos: torch.Tensor | None,
        memory: DecoderMemory,
        mask_features: torch.Tensor,
        extra: ExtraQueries,
    ) -> dict:
        """Decode the E extra queries before the Q learned ones; split the predictions."""
        e = extra.num
        output = torch.cat([extra.content.to(output.dtype), output])  # (E+Q, B, C)
        if query_pos is not None or extra.pos is not None:
            extra_pos = torch.zeros_like(extra.content) if extra.pos is None else extra.pos
            if query_pos is None:
                query_pos = torch.zeros_like(output[e:])  # (Q, B, C)
            query_pos = torch.cat([extra_pos.to(query_pos.dtype), query_pos])  # (E+Q, B, C)
        predictions_class, predictions_mask = self.decode(
            output,
            query_pos,
            memory,
            mask_features,
            self_attn_mask=extra.self_attn_mask,
            cross_attn_mask_fn=extra.cross_attn_mask_fn,
        )

        def split(predictions, part):  # per point (B, E+Q, ...) -> (B, Q, ...) or (B, E, ...)
            return [None if p is None else p[:, part] for p in predictions]

        out = self.format_outputs(
            split(predictions_class, slice(e, None)), split(predictions_mask, slice(e, None))
        )
        extra_out = self.format_outputs(
            split(predictions_class, slice(None, e)), split(predictions_mask, slice(None, e))
        )
        out[self.variant.output_key] = {**extra_out, **extra.info}
        return out

    def _prepare_memory(self, x: list[torch.Tensor]) -> DecoderMemory:
        if len(x) != self.num_feature_levels:
            raise ValueError(f"Expected {self.num_feature_levels} feature maps, got {len(x)}")
        src, pos, sizes = [], [], []
        for i, feature in enumerate(x):
            sizes.append(tuple(feature.shape[-2:]))
            # (B, C, H, W) -> (B, C, HW) -> (HW, B, C)
            pos.append(self.pe_layer(feature).flatten(2).permute(2, 0, 1))
            level = (
                self.input_proj[i](feature).flatten(2) + self.level_embed.weight[i][None, :, None]
            )
            src.append(level.permute(2, 0, 1))
        return DecoderMemory(src, pos, sizes)

    def initial_queries(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Learned query content and positions, each (Q, B, C) (positions None without
        ``query_embed``)."""
        output = self.query_feat.weight.unsqueeze(1).repeat(1, batch_size, 1)  # (Q, B, C)
        if self.query_embed is None:
            return output, None
        query_pos = self.query_embed.weight.unsqueeze(1).repeat(1, batch_size, 1)  # (Q, B, C)
        return output, query_pos

    def decode(
        self,
        output: torch.Tensor,
        query_pos: torch.Tensor | None,
        memory: DecoderMemory,
        mask_features: torch.Tensor,
        self_attn_mask: torch.Tensor | None = None,
        cross_attn_mask_fn: CrossAttnMaskFn | None = None,
    ) -> tuple[list[torch.Tensor | None], list[torch.Tensor]]:
        """Run all layers, predicting before the first and after each.

        Args:
            output, query_pos: query content and positions (Q', B, C); Q' may exceed Q when a
                caller appends extra queries.
            memory: from :meth:`_prepare_memory`.
            mask_features: (B, MASK_DIM, H/4, W/4).
            self_attn_mask: (Q', Q') or (B*heads, Q', Q') bool for every self-attention, or None.
            cross_attn_mask_fn: optional hook rewriting each layer's cross-attention mask.

        Returns:
            per prediction point (dec_layers + 1): class logits (B, Q', K+1) (None without
            mask classification) and mask logits (B, Q', H/4, W/4).
        """
        predictions_class, predictions_mask = [], []
        outputs_class, outputs_mask, attn_mask = self.forward_prediction_heads(
            output, mask_features, attn_mask_target_size=memory.sizes[0]
        )
        predictions_class.append(outputs_class)
        predictions_mask.append(outputs_mask)
        for i in range(self.num_layers):
            level = i % self.num_feature_levels
            if cross_attn_mask_fn is not None:
                attn_mask = cross_attn_mask_fn(i, attn_mask, memory.sizes[level])
            output = self.forward_layer(
                i,
                output,
                query_pos,
                memory.src[level],
                memory.pos[level],
                cross_attn_mask=attn_mask,
                self_attn_mask=self_attn_mask,
            )
            next_size = memory.sizes[(i + 1) % self.num_feature_levels]
            outputs_class, outputs_mask, attn_mask = self.forward_prediction_heads(
                output, mask_features, attn_mask_target_size=next_size
            )
            predictions_class.append(outputs_class)
            predictions_mask.append(outputs_mask)
        return predictions_class, predictions_mask

    def forward_layer(
        self,
        i: int,
        output: torch.Tensor,
        query_pos: torch.Tensor,
        src: torch.Tensor,
        pos: torch.Tensor,
        cross_attn_mask: torch.Tensor,
        self_attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Layer i: masked cross-attention, self-attention, FFN on (Q', B, C) queries."""
        output = self.transformer_cross_attention_layers[i](
            output,
            src,
            memory_mask=unmask_fully_masked_rows(cross_attn_mask),
            memory_key_padding_mask=None,  # padded pixels are attended
            pos=pos,
            query_pos=query_pos,
        )
        output = self.transformer_self_attention_layers[i](
            output, tgt_mask=self_attn_mask, query_pos=query_pos
        )
        return self.transformer_ffn_layers[i](output)

    def forward_prediction_heads(
        self,
        output: torch.Tensor,
        mask_features: torch.Tensor,
        attn_mask_target_size: tuple[int, int],
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """
        Args:
            output: queries (Q', B, C).
            mask_features: (B, MASK_DIM, H/4, W/4).
            attn_mask_target_size: (h, w) of the level the next layer reads.

        Returns:
            class logits (B, Q', K+1) or None, mask logits (B, Q', H/4, W/4) and the next
            cross-attention mask (B*heads, Q', h*w) bool (True = not allowed).
        """
        decoder_output = self.decoder_norm(output).transpose(0, 1)  # (B, Q', C)
        outputs_class = self.class_embed(decoder_output) if self.mask_classification else None
        mask_embed = self.mask_embed(decoder_output)  # (B, Q', MASK_DIM)
        outputs_mask = torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features)
        attn_mask = mask_logits_to_attn_mask(outputs_mask, attn_mask_target_size, self.num_heads)
        return outputs_class, outputs_mask, attn_mask

    def format_outputs(
        self, predictions_class: list[torch.Tensor | None], predictions_mask: list[torch.Tensor]
    ) -> dict:
        """Last prediction point as ``pred_*``; the earlier ones as ``aux_outputs``."""
        if self.mask_classification:
            out = {"pred_logits": predictions_class[-1], "pred_masks": predictions_mask[-1]}
            out["aux_outputs"] = [
                {"pred_logits": c, "pred_masks": m}
                for c, m in zip(predictions_class[:-1], predictions_mask[:-1])
            ]
        else:
            out = {"pred_masks": predictions_mask[-1]}
            out["aux_outputs"] = [{"pred_masks": m} for m in predictions_mask[:-1]]
        return out
