"""Instance-activation-guided query selection against hand-built score maps."""

import torch

from mask2former.models.fastinst.query_proposal import (
    QueryProposal,
    local_maximum,
    pixel_centres,
    selection_scores,
)

K, H, W = 3, 6, 7


def logits_from(peaks: dict[tuple[int, int], tuple[int, float]], background: float = 1.0):
    """(1, K+1, H, W) logits whose softmax is: at each peak (y, x) -> (class, p) probability p
    for that class and the rest on background; elsewhere ``background`` on background and the
    rest spread evenly over the K classes (none by default: no background maxima)."""
    probs = torch.full((K + 1, H, W), (1 - background) / K)
    probs[K] = background
    for (y, x), (c, p) in peaks.items():
        probs[:, y, x] = 0.0
        probs[c, y, x] = p
        probs[K, y, x] = 1 - p
    return probs.clamp_min(1e-12).log()[None]


def flat(y: int, x: int) -> int:
    return y * W + x


def test_isolated_peaks_rank_first_in_score_order():
    peaks = {(1, 1): (0, 0.8), (4, 5): (2, 0.6), (3, 2): (1, 0.7)}
    scores = selection_scores(logits_from(peaks))  # (1, H*W)
    top = scores[0].topk(3)
    assert top.indices.tolist() == [flat(1, 1), flat(3, 2), flat(4, 5)]
    torch.testing.assert_close(top.values, torch.tensor([1.8, 1.7, 1.6]))


def test_plus_one_lets_a_weak_maximum_outrank_a_strong_non_maximum():
    # (2, 3) = 0.9 is next to the 0.95 maximum of the same class: not a local maximum;
    # the isolated 0.3 peak is one and must come before it.
    peaks = {(2, 2): (0, 0.95), (2, 3): (0, 0.9), (5, 6): (1, 0.3)}
    scores = selection_scores(logits_from(peaks))[0]
    order = scores.argsort(descending=True).tolist()
    assert order[:3] == [flat(2, 2), flat(5, 6), flat(2, 3)]
    torch.testing.assert_close(scores[flat(2, 3)], torch.tensor(0.9))


def test_neighbours_of_another_class_do_not_suppress_a_maximum():
    # Each pixel keeps only its best foreground class, so a stronger neighbour of another
    # class is 0 in this pixel's channel.
    peaks = {(2, 2): (0, 0.5), (2, 3): (1, 0.9)}
    scores = selection_scores(logits_from(peaks))[0]
    assert scores[flat(2, 2)] > 1 and scores[flat(2, 3)] > 1


def test_plateau_gives_several_maxima():
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 1, 1] = x[0, 0, 1, 2] = 0.5
    maxima = local_maximum(x)[0, 0]
    assert maxima.sum() == 2 and maxima[1, 1] and maxima[1, 2]
    assert not local_maximum(torch.full((1, 1, 2, 2), 1e-7)).any()  # below epsilon


def test_fill_rule_with_fewer_maxima_than_queries():
    torch.manual_seed(0)
    peaks = {(1, 1): (0, 0.8), (4, 5): (2, 0.6)}
    proposal = QueryProposal(num_features=4, num_queries=10, num_classes=K)
    logits = logits_from(peaks)
    proposal.conv_proposal_cls_logits = torch.nn.Identity()  # logits = the input map
    pos = torch.zeros(1, K + 1, H, W)
    out = proposal(logits, pos)
    idx = out.indices[0].tolist()
    assert len(idx) == 10 and len(set(idx)) == 10
    assert idx[:2] == [flat(1, 1), flat(4, 5)]
    scores = selection_scores(logits)[0]
    assert (scores[idx[2:]] < 1).all()  # filled by the best non-maxima, in score order
    assert scores[idx[2:]].tolist() == sorted(scores[idx[2:]].tolist(), reverse=True)


def test_small_maps_select_every_pixel():
    proposal = QueryProposal(num_features=4, num_queries=100, num_classes=K)
    out = proposal(torch.randn(2, 4, 3, 5), torch.zeros(1, 4, 3, 5))
    assert out.features.shape == (2, 15, 4)
    assert sorted(out.indices[0].tolist()) == list(range(15))


def test_features_positions_and_locations_are_gathered_at_the_indices():
    torch.manual_seed(0)
    proposal = QueryProposal(num_features=8, num_queries=5, num_classes=K)
    x = torch.randn(2, 8, H, W)
    pos = torch.randn(1, 8, H, W)
    out = proposal(x, pos)
    for b in range(2):
        for n, i in enumerate(out.indices[b].tolist()):
            y, xx = divmod(i, W)
            torch.testing.assert_close(out.features[b, n], x[b, :, y, xx])
            torch.testing.assert_close(out.pos_embeds[b, n], pos[0, :, y, xx])
            torch.testing.assert_close(
                out.locations[b, n], torch.tensor([(xx + 0.5) / W, (y + 0.5) / H])
            )
    assert pixel_centres(2, 4, torch.device("cpu")).tolist()[:2] == [[0.125, 0.25], [0.375, 0.25]]


def test_no_gradient_through_the_indices():
    torch.manual_seed(0)
    proposal = QueryProposal(num_features=8, num_queries=5, num_classes=K)
    x = torch.randn(1, 8, H, W, requires_grad=True)
    out = proposal(x, torch.zeros(1, 8, H, W))
    out.features.sum().backward()
    assert all(p.grad is None for p in proposal.parameters())  # the head gets no gradient
    selected = torch.zeros(H * W, dtype=torch.bool)
    selected[out.indices[0]] = True
    grad = x.grad[0].flatten(1)  # (C, H*W)
    assert (grad[:, selected] == 1).all() and (grad[:, ~selected] == 0).all()
    assert not out.indices.requires_grad
