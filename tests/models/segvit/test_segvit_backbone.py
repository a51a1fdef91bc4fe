"""The plain ViT backbone and its QD block (tiny sizes, CPU)."""

import pytest
import torch
from torch.nn import functional as F

from mask2former.models.segvit.backbone import D2PlainViT, resize_pos_embed, shrink_block_forward


def tiny_vit(**kwargs):
    args = dict(img_size=64, patch_size=16, embed_dim=64, depth=6, num_heads=4,
                out_indices=[1, 3, 5])
    args.update(kwargs)
    torch.manual_seed(0)
    return D2PlainViT(**args).eval()


def test_non_square_input_gives_three_stride_16_maps():
    vit = tiny_vit()
    out = vit(torch.randn(2, 3, 64, 96))
    assert list(out) == ["block1", "block3", "block5"]
    assert all(v.shape == (2, 64, 4, 6) for v in out.values())
    assert {k: s.stride for k, s in vit.output_shape().items()} == dict.fromkeys(out, 16)
    assert vit.size_divisibility == 16


def test_position_embedding_is_resized_bicubically_from_the_4x4_grid():
    vit = tiny_vit()
    assert vit.pos_embed.shape == (1, 16, 64)
    grid = vit.pos_embed.reshape(1, 4, 4, 64).permute(0, 3, 1, 2)  # (1, C, 4, 4)
    expected = F.interpolate(grid, size=(4, 6), mode="bicubic", align_corners=False)
    torch.testing.assert_close(resize_pos_embed(vit.pos_embed, (4, 6)),
                               expected.flatten(2).transpose(1, 2))
    # The token map row-major: token (r, c) of the input is at index r * w + c.
    x = torch.randn(1, 3, 64, 96)
    tokens = vit.patch_embed(x).flatten(2).transpose(1, 2) + resize_pos_embed(vit.pos_embed, (4, 6))
    block0 = vit.blocks[1](vit.blocks[0](tokens))  # (1, 24, C)
    torch.testing.assert_close(vit(x)["block1"][0, :, 2, 5], block0[0, 2 * 6 + 5])


def test_a_checkpoint_with_another_grid_is_resized_on_load():
    vit = tiny_vit()
    state = vit.state_dict()
    state["pos_embed"] = torch.randn(1, 9, 64)  # a 3x3 grid
    vit.load_state_dict(state)
    assert vit.pos_embed.shape == (1, 16, 64)


def test_input_not_a_multiple_of_the_patch_is_an_error():
    with pytest.raises(ValueError, match="multiple of the patch size"):
        tiny_vit()(torch.randn(1, 3, 64, 90))


def test_qd_block_halves_the_grid_with_nearest_queries():
    vit = tiny_vit(out_indices=[1, 5], shrink_index=2)
    out = vit(torch.randn(2, 3, 64, 96))
    assert out["block1"].shape == (2, 64, 4, 6) and out["block5"].shape == (2, 64, 2, 3)
    assert vit.output_shape()["block5"].stride == 32 and vit.size_divisibility == 32
    # By hand: attention of the even-row/even-column tokens over all tokens.
    block = vit.blocks[2]
    x = torch.randn(2, 24, 64)
    got = shrink_block_forward(block, x, (4, 6))
    assert got.shape == (2, 6, 64)
    down = x.reshape(2, 4, 6, 64)[:, ::2, ::2].reshape(2, 6, 64)
    qkv_w, qkv_b = block.attn.qkv.weight, block.attn.qkv.bias
    q = F.linear(block.norm1(down), qkv_w[:64], qkv_b[:64]).reshape(2, 6, 4, 16).transpose(1, 2)
    kv = F.linear(block.norm1(x), qkv_w[64:], qkv_b[64:])
    k = kv[..., :64].reshape(2, 24, 4, 16).transpose(1, 2)
    v = kv[..., 64:].reshape(2, 24, 4, 16).transpose(1, 2)
    attn = (q @ k.transpose(-1, -2) / 4.0).softmax(-1)
    mixed = block.attn.proj((attn @ v).transpose(1, 2).reshape(2, 6, 64))
    y = down + mixed
    torch.testing.assert_close(got, y + block.mlp(block.norm2(y)), atol=1e-5, rtol=1e-5)


def test_qd_on_an_odd_grid_is_a_clear_error():
    vit = tiny_vit(out_indices=[1, 5], shrink_index=2)
    with pytest.raises(ValueError, match="QD .* must be even; got 3x6 tokens"):
        vit(torch.randn(1, 3, 48, 96))
