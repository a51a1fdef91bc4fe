"""FastInst's dual-path transformer decoder, with GT-mask-guided learning in training.

Each layer first updates the 1/8 pixel features (cross-attention from pixels to the queries,
FFN), then the queries (masked cross-attention to the updated pixels, self-attention, FFN).
Layer sequence, shapes and parameter names follow the official ``FastInstDecoder``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from detectron2.config import configurable
from torch import nn
from torch.nn import functional as F

from ..mask2former.transformer_decoder.layers import (
    MLP,
    CrossAttentionLayer,
    FFNLayer,
    SelfAttentionLayer,
)
from ..mask2former.transformer_decoder.mask2former_transformer_decoder import (
    TRANSFORMER_DECODER_REGISTRY,
    unmask_fully_masked_rows,
)
from .query_proposal import QueryProposal

__all__ = ["FastInstDecoder", "prediction_attn_mask", "gt_attn_mask"]

Indices = Sequence[tuple[torch.Tensor, torch.Tensor]]
# matcher(outputs, targets) -> per image (query indices, target indices)
Matcher = Callable[[dict, list[dict]], list[tuple[torch.Tensor, torch.Tensor]]]


def prediction_attn_mask(
    mask_logits: torch.Tensor, num_aux_queries: int, num_heads: int
) -> torch.Tensor:
    """Cross-attention mask of the next layer from the current mask logits.

    A query may not attend to pixels where its mask logit is < 0; the auxiliary queries (the
    last ``num_aux_queries`` rows) attend everywhere; a row blocked everywhere is unblocked.

    Args:
        mask_logits: (B, N, h, w) logits of the N instance queries.

    Returns:
        (B*heads, N + num_aux_queries, h*w) bool, True = not allowed, detached; row
        ``b * heads + head`` belongs to image b.
    """
    blocked = (mask_logits < 0).flatten(2)  # (B, N, h*w)
    blocked = F.pad(blocked, (0, 0, 0, num_aux_queries), value=False)  # (B, N + aux, h*w)
    return _per_head(unmask_fully_masked_rows(blocked), num_heads)


def gt_attn_mask(
    targets: list[dict],
    indices: Indices,
    num_queries: int,
    size: tuple[int, int],
    num_heads: int,
) -> torch.Tensor:
    """Cross-attention mask of the GT-mask-guided pass.

    A matched query may attend only inside its ground-truth mask (nearest-resized to ``size``);
    unmatched and auxiliary queries attend everywhere; rows blocked everywhere are unblocked.

    Args:
        targets: per image "masks" (G, H, W).
        indices: per image (query indices, target indices).
        num_queries: rows of the mask (instance + auxiliary queries).
        size: (h, w) of the pixel features.

    Returns:
        (B*heads, num_queries, h*w) bool, True = not allowed.
    """
    masks = []
    for target, (src, tgt) in zip(targets, indices):
        gt = target["masks"]  # (G, H, W)
        blocked = torch.zeros((num_queries, *size), dtype=torch.bool, device=gt.device)  # (Q,h,w)
        if len(src):
            resized = F.interpolate(gt[None].float(), size=size, mode="nearest")[0]  # (G, h, w)
            blocked[src.to(gt.device)] = resized[tgt.to(gt.device)] <= 0
        masks.append(blocked.flatten(1))  # (num_queries, h*w)
    blocked = torch.stack(masks)  # (B, num_queries, h*w)
    return _per_head(unmask_fully_masked_rows(blocked), num_heads)


def _per_head(mask: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, Q, L) -> (B*heads, Q, L), detached."""
    return mask.detach().repeat_interleave(num_heads, dim=0)


@TRANSFORMER_DECODER_REGISTRY.register()
class FastInstDecoder(nn.Module):
    """Query selection, dual-path layers and per-layer prediction heads.

    Args:
        in_channels: channels of the pixel decoder outputs (must equal ``hidden_dim``: the
            queries are E4 features).
        num_classes: K.
        hidden_dim: query width C.
        num_queries: instance-activation-guided queries per image.
        num_aux_queries: learnable auxiliary queries.
        nheads: attention heads.
        dim_feedforward: FFN width.
        dec_layers: dual-path layers L.
        pre_norm: pre-LayerNorm layers.
        mask_dim: width of the mask embeddings and the projected pixel features.
    """

    @configurable
    def __init__(
        self,
        in_channels: int,
        *,
        num_classes: int,
        hidden_dim: int,
        num_queries: int,
        num_aux_queries: int,
        nheads: int,
        dim_feedforward: int,
        dec_layers: int,
        pre_norm: bool,
        mask_dim: int,
    ):
        super().__init__()
        if in_channels != hidden_dim:
            raise ValueError(
                f"FastInstDecoder: MODEL.FASTINST.HIDDEN_DIM ({hidden_dim}) must equal "
                f"MODEL.SEM_SEG_HEAD.CONVS_DIM ({in_channels}): queries are pixel features"
            )
        if dec_layers < 1:
            raise ValueError(f"FastInstDecoder: DEC_LAYERS must be >= 1, got {dec_layers}")
        self.num_heads = nheads
        self.num_layers = dec_layers
        self.num_queries = num_queries
        self.num_aux_queries = num_aux_queries

        # Learnable position map, resized to each feature map (side round(sqrt(num_queries))).
        side = int(round(math.sqrt(num_queries)))
        self.meta_pos_embed = nn.Parameter(torch.zeros(1, hidden_dim, side, side))  # (1,C,s,s)
        nn.init.trunc_normal_(self.meta_pos_embed, std=0.02)
        if num_aux_queries > 0:
            self.empty_query_features = nn.Embedding(num_aux_queries, hidden_dim)
            self.empty_query_pos_embed = nn.Embedding(num_aux_queries, hidden_dim)
        self.query_proposal = QueryProposal(hidden_dim, num_queries, num_classes)

        def cross() -> CrossAttentionLayer:
            return CrossAttentionLayer(hidden_dim, nheads, dropout=0.0, normalize_before=pre_norm)

        def ffn() -> FFNLayer:
            return FFNLayer(hidden_dim, dim_feedforward, dropout=0.0, normalize_before=pre_norm)

        layers = range(dec_layers)
        self.transformer_query_cross_attention_layers = nn.ModuleList(cross() for _ in layers)
        self.transformer_query_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nheads, dropout=0.0, normalize_before=pre_norm)
            for _ in layers
        )
        self.transformer_query_ffn_layers = nn.ModuleList(ffn() for _ in layers)
        self.transformer_mask_cross_attention_layers = nn.ModuleList(cross() for _ in layers)
        self.transformer_mask_ffn_layers = nn.ModuleList(ffn() for _ in layers)

        # Prediction heads: index 0 before the first layer, index i + 1 after layer i.
        heads = range(dec_layers + 1)
        self.decoder_query_norm_layers = nn.ModuleList(nn.LayerNorm(hidden_dim) for _ in heads)
        self.class_embed_layers = nn.ModuleList(
            MLP(hidden_dim, hidden_dim, num_classes + 1, 3) for _ in heads
        )
        self.mask_embed_layers = nn.ModuleList(
            MLP(hidden_dim, hidden_dim, mask_dim, 3) for _ in heads
        )
        self.mask_features_layers = nn.ModuleList(nn.Linear(hidden_dim, mask_dim) for _ in heads)

    @classmethod
    def from_config(cls, cfg, in_channels: int, mask_classification: bool = True) -> dict:
        fi = cfg.MODEL.FASTINST
        return {
            "in_channels": in_channels,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "hidden_dim": fi.HIDDEN_DIM,
            "num_queries": fi.NUM_OBJECT_QUERIES,
            "num_aux_queries": fi.NUM_AUX_QUERIES,
            "nheads": fi.NHEADS,
            "dim_feedforward": fi.DIM_FEEDFORWARD,
            "dec_layers": fi.DEC_LAYERS,
            "pre_norm": fi.PRE_NORM,
            "mask_dim": cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
        }

    def forward(
        self,
        x: list[torch.Tensor],
        targets: list[dict] | None = None,
        matcher: Matcher | None = None,
    ) -> dict:
        """
        Args:
            x: [E5, E4, E3] from the pixel decoder, (B, C, h_l, w_l); E5 is not read.
            targets: training only, per image "labels" (G,) and "masks" (G, H, W); with
                ``matcher``, runs GT-mask-guided learning.
            matcher: matches the last layer's predictions to ``targets`` (its "pred_logits",
                "pred_masks", "query_locations" outputs).

        Returns:
            "pred_logits" (B, N, K+1), "pred_masks" (B, N, h3, w3) of the last layer;
            "proposal_cls_logits" (B, K+1, h4, w4); "query_locations" (B, N, 2); in training
            "aux_outputs": the L guided predictions, then the initial and L-1 intermediate
            ones, and "pred_matching_indices" (the last layer's matching, reused by the guided
            predictions; None without targets).
        """
        e4, e3 = x[1], x[2]
        size = tuple(e3.shape[-2:])
        pixel_pos = F.interpolate(self.meta_pos_embed, size=size, mode="bilinear",
                                  align_corners=False)  # (1, C, h3, w3)
        proposal_pos = F.interpolate(self.meta_pos_embed, size=e4.shape[-2:], mode="bilinear",
                                     align_corners=False)  # (1, C, h4, w4)
        pixel_pos = pixel_pos.flatten(2).permute(2, 0, 1)  # (h3*w3, 1, C)
        pixels = e3.flatten(2).permute(2, 0, 1)  # (h3*w3, B, C)

        proposals = self.query_proposal(e4, proposal_pos)
        queries = proposals.features.transpose(0, 1)  # (N, B, C)
        query_pos = proposals.pos_embeds.transpose(0, 1)  # (N, B, C)
        if self.num_aux_queries > 0:
            b = e4.shape[0]
            aux = self.empty_query_features.weight[:, None].expand(-1, b, -1)  # (aux, B, C)
            aux_pos = self.empty_query_pos_embed.weight[:, None].expand(-1, b, -1)
            queries = torch.cat([queries, aux])  # (N + aux, B, C)
            query_pos = torch.cat([query_pos, aux_pos])  # (N + aux, B, C)

        logits, masks = self.predict(queries, pixels, size, 0)
        predictions = [(logits, masks)]
        memory = []
        for i in range(self.num_layers):
            attn_mask = prediction_attn_mask(masks, self.num_aux_queries, self.num_heads)
            queries, pixels = self.forward_layer(queries, pixels, query_pos, pixel_pos,
                                                 attn_mask, i)
            logits, masks = self.predict(queries, pixels, size, i + 1)
            predictions.append((logits, masks))
            memory.append((queries, pixels))

        out = {
            "pred_logits": predictions[-1][0],
            "pred_masks": predictions[-1][1],
            "proposal_cls_logits": proposals.class_logits,
            "query_locations": proposals.locations,
        }
        if not self.training:
            return out
        indices = None
        guided: list[dict] = []
        if targets is not None and matcher is not None:
            indices = matcher(out, targets)
            guided_mask = gt_attn_mask(targets, indices, queries.shape[0], size, self.num_heads)
            for i, (layer_queries, layer_pixels) in enumerate(memory):
                # The reference feeds layer i its own outputs of the normal pass.
                q, p = self.forward_layer(layer_queries, layer_pixels, query_pos, pixel_pos,
                                          guided_mask, i)
                g_logits, g_masks = self.predict(q, p, size, i + 1)
                guided.append({"pred_logits": g_logits, "pred_masks": g_masks,
                               "pred_matching_indices": indices})
        normal = [{"pred_logits": lg, "pred_masks": m, "pred_matching_indices": None}
                  for lg, m in predictions[:-1]]
        for aux_out in guided + normal:
            aux_out["query_locations"] = proposals.locations
        out["aux_outputs"] = guided + normal
        out["pred_matching_indices"] = indices
        return out

    def forward_layer(
        self,
        queries: torch.Tensor,
        pixels: torch.Tensor,
        query_pos: torch.Tensor,
        pixel_pos: torch.Tensor,
        attn_mask: torch.Tensor,
        i: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Dual-path layer i. queries, query_pos: (Q, B, C); pixels: (HW, B, C); pixel_pos:
        (HW, 1, C); attn_mask: (B*heads, Q, HW) bool. Returns the updated (queries, pixels)."""
        pixels = self.transformer_mask_cross_attention_layers[i](
            pixels, queries, query_pos=pixel_pos, pos=query_pos
        )  # (HW, B, C)
        pixels = self.transformer_mask_ffn_layers[i](pixels)
        queries = self.transformer_query_cross_attention_layers[i](
            queries, pixels, memory_mask=attn_mask, query_pos=query_pos, pos=pixel_pos
        )  # (Q, B, C)
        queries = self.transformer_query_self_attention_layers[i](queries, query_pos=query_pos)
        queries = self.transformer_query_ffn_layers[i](queries)
        return queries, pixels

    def predict(
        self, queries: torch.Tensor, pixels: torch.Tensor, size: tuple[int, int], head: int
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Prediction head ``head`` on the instance queries.

        Args:
            queries: (N + aux, B, C); pixels: (h*w, B, C); size: (h, w).

        Returns:
            class logits (B, N, K+1) (None at inference before the last head, as the reference
            skips them) and mask logits (B, N, h, w).
        """
        num = queries.shape[0] - self.num_aux_queries
        q = self.decoder_query_norm_layers[head](queries[:num]).transpose(0, 1)  # (B, N, C)
        logits = None
        if self.training or head == self.num_layers:
            logits = self.class_embed_layers[head](q)  # (B, N, K+1)
        mask_embed = self.mask_embed_layers[head](q)  # (B, N, D)
        pixel_embed = self.mask_features_layers[head](pixels.transpose(0, 1))  # (B, h*w, D)
        masks = torch.einsum("bqc,blc->bql", mask_embed, pixel_embed)  # (B, N, h*w)
        return logits, masks.unflatten(2, size)  # (B, N, h, w)
