"""Quadtree node selection, oracle refinement and the encoder (spec 13.4, 13.5, 13.7)."""

import torch
from torch.nn import functional as F

from mask2former.models.transfiner.encoder import TransfinerEncoder
from mask2former.models.transfiner.quadtree import (
    gather_cells,
    gather_neighbourhoods,
    pack_selected,
    refine_levels,
    sample_nodes,
    select_nodes,
    write_levels,
)

SIZES = (28, 56, 112)


def test_selected_nodes_form_a_quadtree():
    torch.manual_seed(0)
    q = torch.rand(3, 1, 28, 28)  # (R, 1, 28, 28)
    for thresholds in [(1e-6, 0.125, 0.8), (0.125, 0.5, 0.5)]:
        levels = select_nodes(q, thresholds, SIZES)
        assert [tuple(x.shape) for x in levels] == [(3, 28, 28), (3, 56, 56), (3, 112, 112)]
        for parent, child in zip(levels, levels[1:]):
            # each child cell's parent is cell (y // 2, x // 2) of the previous level
            parent_of_child = F.interpolate(parent[:, None].float(), scale_factor=2.0)[:, 0]
            assert not (child & ~parent_of_child.bool()).any()
            assert child.sum() > 0


def test_sample_nodes_draws_selected_cells_and_tiles():
    sel = torch.zeros(3, 28, 28, dtype=torch.bool)
    sel[0, 5, :20] = True  # 20 nodes
    sel[1, :, :] = True  # 784 nodes
    sel[2, 3, 3] = True  # 1 node
    index, valid = sample_nodes(sel, 150, 10)
    assert index.shape == (3, 150)
    assert valid.tolist() == [True, True, False]
    flat = sel.flatten(1)
    assert flat.gather(1, index[:2]).all()
    assert sorted(set(index[0].tolist())) == sorted(range(5 * 28, 5 * 28 + 20))  # all 20 used
    assert len(set(index[1].tolist())) == 150  # no repeats when enough nodes


def test_pack_selected_puts_nodes_first_and_pads():
    sel = torch.zeros(2, 4, 4, dtype=torch.bool)
    sel[0, 1, 2] = sel[0, 3, 0] = True
    sel[1, 0, 0] = True
    index, padding = pack_selected(sel)
    assert index[0].tolist() == [6, 12] and index[1, 0].item() == 0
    assert padding.tolist() == [[False, False], [False, True]]


def _oracle_run(coarse, gts, selected):
    packed = [pack_selected(s) for s in selected]
    index = [i for i, _ in packed]
    padding = [p for _, p in packed]
    values = [gather_cells(gt[:, None], i)[..., 0] for gt, i in zip(gts, index)]
    return write_levels(coarse, values, index, padding, SIZES), index, padding


def test_oracle_refinement_writes_gt_at_every_selected_node():
    torch.manual_seed(0)
    coarse = torch.rand(2, 1, 28, 28)
    gts = [(torch.rand(2, s, s) > 0.5).float() for s in SIZES]
    selected = select_nodes(torch.rand(2, 1, 28, 28), (0.3, 0.5, 0.7), SIZES)
    out, _, _ = _oracle_run(coarse, gts, selected)
    assert out.shape == (2, 1, 112, 112)
    assert torch.equal(out[:, 0][selected[2]], gts[2][selected[2]])


def test_no_nodes_gives_the_bilinear_upsampling_of_the_coarse_mask():
    coarse = torch.rand(2, 1, 28, 28)
    gts = [torch.rand(2, s, s) for s in SIZES]
    selected = [torch.zeros(2, s, s, dtype=torch.bool) for s in SIZES]
    out, index, _ = _oracle_run(coarse, gts, selected)
    assert all(i.shape[1] == 0 for i in index)
    up = F.interpolate(coarse, (56, 56), mode="bilinear", align_corners=True)
    up = F.interpolate(up, (112, 112), mode="bilinear", align_corners=True)
    torch.testing.assert_close(out, up)


def _disc(size: int, radius: float) -> torch.Tensor:
    """(1, 1, size, size) disc of ``radius`` (in units of the grid side) at the grid centre,
    sampled at the cell centres."""
    c = (torch.arange(size) + 0.5) / size - 0.5
    return ((c[:, None] ** 2 + c[None, :] ** 2) < radius**2).float()[None, None]


def test_cell_centre_upsampling_keeps_the_geometry_of_a_perfect_coarse_mask():
    """With no nodes the 112 mask is the 28 mask upsampled; a perfect 28x28 disc (area
    averages of the 112 disc) must come back as that disc. align_corners=True stretches the
    grid outwards; align_corners=False keeps the cell centres where RoIAlign puts them."""
    gt = _disc(112, 0.3)  # (1, 1, 112, 112)
    coarse = F.avg_pool2d(gt, 4)  # (1, 1, 28, 28)
    empty = [torch.zeros(1, 0, dtype=torch.long)] * 3
    no_pad = [torch.zeros(1, 0, dtype=torch.bool)] * 3
    values = [torch.zeros(1, 0)] * 3

    def iou(align_corners):
        out = write_levels(coarse, values, empty, no_pad, SIZES, align_corners=align_corners)
        pred, ref = out > 0.5, gt > 0.5
        return float((pred & ref).sum() / (pred | ref).sum())

    stretched, centred = iou(True), iou(False)
    assert centred > 0.98
    assert stretched < centred - 0.02
    # the stretch moves the mask outwards: it only adds pixels
    out = write_levels(coarse, values, empty, no_pad, SIZES, align_corners=True) > 0.5
    assert out.sum() > (gt > 0.5).sum()


def _encoder():
    torch.manual_seed(0)
    return TransfinerEncoder(
        in_channels=16, d_model=32, nhead=4, num_layers=2, dim_feedforward=64, dropout=0.0
    ).eval()


@torch.no_grad()
def test_encoder_is_permutation_equivariant():
    enc = _encoder()
    feats, probs, pos = torch.randn(2, 30, 16), torch.rand(2, 30), torch.randn(2, 30, 32)
    perm = torch.randperm(30)
    out = enc(feats, probs, pos)
    out_perm = enc(feats[:, perm], probs[:, perm], pos[:, perm])
    torch.testing.assert_close(out_perm, out[:, perm], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_padding_does_not_change_a_rois_logits():
    enc = _encoder()
    torch.manual_seed(1)
    context = torch.randn(2, 16, 14, 14)
    coarse = torch.rand(2, 1, 28, 28)
    maps = [torch.randn(2, 16, s, s) for s in SIZES]
    selected = select_nodes(torch.rand(2, 1, 28, 28), (0.5, 0.7, 0.9), SIZES)
    packed = [pack_selected(s) for s in selected]
    both = refine_levels(enc, context_feats=context, coarse_probs=coarse, level_feats=maps,
                         level_index=[i for i, _ in packed],
                         level_padding=[p for _, p in packed])
    for r in range(2):
        alone_packed = [pack_selected(s[r : r + 1]) for s in selected]
        alone = refine_levels(enc, context_feats=context[r : r + 1], coarse_probs=coarse[r : r + 1],
                              level_feats=[m[r : r + 1] for m in maps],
                              level_index=[i for i, _ in alone_packed],
                              level_padding=[p for _, p in alone_packed])
        for a, b in zip(alone, both):
            torch.testing.assert_close(a[0], b[r, : a.shape[1]], atol=1e-5, rtol=1e-5)


def test_gather_neighbourhoods_by_hand():
    maps = torch.arange(1.0, 10.0).view(1, 1, 3, 3)  # [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    got = gather_neighbourhoods(maps, torch.tensor([[4, 0]]))  # centre, top-left corner
    assert got.shape == (1, 2, 9)
    assert got[0, 0].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert got[0, 1].tolist() == [0, 0, 0, 0, 1, 2, 0, 4, 5]


@torch.no_grad()
def test_node_context_adds_a_layer_and_keeps_shapes():
    torch.manual_seed(0)
    enc = TransfinerEncoder(in_channels=16, d_model=32, nhead=4, num_layers=1,
                            dim_feedforward=64, dropout=0.0, node_context=True).eval()
    assert enc.context_fc.weight.shape == (16, 9 * 16)
    index = [torch.randint(0, s * s, (2, 7)) for s in SIZES]
    outputs = refine_levels(
        enc, context_feats=torch.randn(2, 16, 14, 14), coarse_probs=torch.rand(2, 1, 28, 28),
        level_feats=[torch.randn(2, 16, s, s) for s in SIZES], level_index=index,
        level_padding=[torch.zeros(2, 7, dtype=torch.bool)] * 3,
    )
    assert [tuple(o.shape) for o in outputs] == [(2, 196), (2, 7), (2, 7), (2, 7)]
