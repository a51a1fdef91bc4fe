"""The decoder's eval outputs against a reference written from the spec's description of the
official layer (sections 3 and 4), with explicit einsum attention: which features are queries
and keys, where each positional embedding is added, post-norm order, head indices, masks."""

import pytest
import torch
import torch.nn.functional as F

from mask2former.models.fastinst.decoder import FastInstDecoder
from mask2former.models.fastinst.query_proposal import selection_scores

B, C, HEADS, K, N, AUX = 2, 16, 2, 3, 5, 2


def attention(mha, query, key, value, blocked=None):
    """(B, Lq, C), (B, Lk, C), (B, Lk, C); blocked (B, Lq, Lk) bool -> (B, Lq, C)."""
    wq, wk, wv = mha.in_proj_weight.chunk(3)
    bq, bk, bv = mha.in_proj_bias.chunk(3)
    d = C // HEADS
    q = (query @ wq.T + bq).unflatten(-1, (HEADS, d))  # (B, Lq, h, d)
    k = (key @ wk.T + bk).unflatten(-1, (HEADS, d))
    v = (value @ wv.T + bv).unflatten(-1, (HEADS, d))
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / d**0.5  # (B, h, Lq, Lk)
    if blocked is not None:
        scores = scores.masked_fill(blocked[:, None], float("-inf"))
    out = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).flatten(2)  # (B, Lq, C)
    return mha.out_proj(out)


def ffn(layer, x):
    return layer.norm(x + layer.linear2(F.relu(layer.linear1(x))))


def heads(dec, i, queries, pixels, size):
    q = dec.decoder_query_norm_layers[i](queries[:, :N])  # (B, N, C)
    masks = torch.einsum("bnc,blc->bnl", dec.mask_embed_layers[i](q),
                         dec.mask_features_layers[i](pixels)).unflatten(2, size)
    return dec.class_embed_layers[i](q), masks


def reference(dec, e4, e3):
    size = e3.shape[-2:]
    ppos = F.interpolate(dec.meta_pos_embed, size=size, mode="bilinear").flatten(2).mT
    qpos_map = F.interpolate(dec.meta_pos_embed, size=e4.shape[-2:], mode="bilinear")
    logits_map = dec.query_proposal.conv_proposal_cls_logits(e4)
    idx = selection_scores(logits_map).topk(N, dim=1).indices  # (B, N)
    queries = torch.stack([e4[b].flatten(1)[:, idx[b]].T for b in range(B)])  # (B, N, C)
    qpos = torch.stack([qpos_map[0].flatten(1)[:, idx[b]].T for b in range(B)])
    queries = torch.cat([queries, dec.empty_query_features.weight.expand(B, -1, -1)], 1)
    qpos = torch.cat([qpos, dec.empty_query_pos_embed.weight.expand(B, -1, -1)], 1)
    pixels = e3.flatten(2).mT  # (B, HW, C)
    _, masks = heads(dec, 0, queries, pixels, size)
    blocked_fractions = []
    for i in range(dec.num_layers):
        blocked = torch.cat([masks.flatten(2) < 0,
                             torch.zeros(B, AUX, pixels.shape[1], dtype=torch.bool)], 1)
        blocked &= ~blocked.all(-1, keepdim=True)
        blocked_fractions.append(blocked.float().mean().item())
        pix_ca = dec.transformer_mask_cross_attention_layers[i]
        pixels = pix_ca.norm(pixels + attention(pix_ca.multihead_attn, pixels + ppos,
                                                queries + qpos, queries))
        pixels = ffn(dec.transformer_mask_ffn_layers[i], pixels)
        q_ca = dec.transformer_query_cross_attention_layers[i]
        queries = q_ca.norm(queries + attention(q_ca.multihead_attn, queries + qpos,
                                                pixels + ppos, pixels, blocked))
        q_sa = dec.transformer_query_self_attention_layers[i]
        queries = q_sa.norm(queries + attention(q_sa.self_attn, queries + qpos, queries + qpos,
                                                queries))
        queries = ffn(dec.transformer_query_ffn_layers[i], queries)
        logits, masks = heads(dec, i + 1, queries, pixels, size)
    return logits, masks, logits_map, blocked_fractions


@pytest.mark.parametrize("layers", [1, 3])
def test_eval_outputs_match_the_reference(layers):
    torch.manual_seed(0)
    dec = FastInstDecoder(C, num_classes=K, hidden_dim=C, num_queries=N, num_aux_queries=AUX,
                          nheads=HEADS, dim_feedforward=32, dec_layers=layers, pre_norm=False,
                          mask_dim=C).eval()
    for name, p in dec.named_parameters():  # defaults (zeros, ones) would hide mistakes
        torch.nn.init.normal_(p, std=0.02 if name.endswith("bias") else 0.3)
    e5, e4, e3 = torch.randn(B, C, 2, 2), torch.randn(B, C, 4, 4), torch.randn(B, C, 8, 8)
    with torch.no_grad():
        out = dec([e5, e4, e3])
        logits, masks, logits_map, blocked = reference(dec, e4, e3)
    assert all(0.05 < f < 0.95 for f in blocked), blocked  # the attention masks really block
    torch.testing.assert_close(out["proposal_cls_logits"], logits_map)
    torch.testing.assert_close(out["pred_logits"], logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["pred_masks"], masks, atol=1e-4, rtol=1e-4)
