"""The SCA's bounded hit gather (CUDA-graph capture): a static gather size learnt from eager frames gives
the exact gather's result when it holds, flags the frames it does not hold for, and only "auto" under
capture takes it."""

from __future__ import annotations

import torch
from test_sca_query_bound import SHAPES, START, make_case

import bevforge.nn.spatial_cross_attn as sca_module
from bevforge.nn.spatial_cross_attn import SpatialCrossAttention, hit_bound, plan_spatial_cross_attention


def _exact_k(mask: torch.Tensor) -> int:
    return int(mask.any(-1).flatten(0, 1).sum(1).max())


def test_hit_bound_rounds_up_with_margin_within_the_queries():
    assert hit_bound(100, 40000) == 128  # 110 -> 128
    assert hit_bound(1000, 40000) == 1152  # 1100 -> 1152
    assert hit_bound(50, 60) == 60  # never more than Q
    assert hit_bound(1, 5) == 5


def test_bounded_plan_at_or_above_the_exact_size_gives_the_exact_result():
    sca, query, value, ref_cam, mask = make_case()
    k = _exact_k(mask)
    exact = plan_spatial_cross_attention(ref_cam, mask, False)
    assert exact.order.shape[1] == k and not exact.bounded
    flag = torch.zeros((), dtype=torch.bool)
    same = plan_spatial_cross_attention(ref_cam, mask, False, k, flag)
    assert same.bounded
    for name in ("order", "valid", "sample_of_group", "flat_index", "refs", "hit", "num_hits"):
        assert torch.equal(getattr(same, name), getattr(exact, name)), name
    roomy = plan_spatial_cross_attention(ref_cam, mask, False, k + 3, flag)  # clamped to Q
    assert k < roomy.order.shape[1] == min(k + 3, mask.shape[2]) and not bool(flag)
    want = sca(query, value, ref_cam, mask, SHAPES, START, exact)
    torch.testing.assert_close(
        sca(query, value, ref_cam, mask, SHAPES, START, roomy), want, rtol=0, atol=1e-6
    )


def test_bounded_plan_below_the_exact_size_sets_the_flag_and_keeps_it():
    _, _, _, ref_cam, mask = make_case()
    k = _exact_k(mask)
    flag = torch.zeros((), dtype=torch.bool)
    short = plan_spatial_cross_attention(ref_cam, mask, False, k - 1, flag)
    assert short.order.shape[1] == k - 1 and bool(flag)
    plan_spatial_cross_attention(ref_cam, mask, False, k, flag)
    assert bool(flag), "or-ed: a later frame that fits does not clear it"


def test_plan_learns_the_bound_eagerly_and_takes_it_under_capture(monkeypatch):
    sca, query, value, ref_cam, mask = make_case()
    key = (*mask.shape[:3], mask.device)
    eager = sca.plan(ref_cam, mask)  # exact, recorded
    want = sca(query, value, ref_cam, mask, SHAPES, START, eager)
    bound, flag = sca.hit_bounds[key]
    assert bound == hit_bound(_exact_k(mask), mask.shape[2]) and not bool(flag)
    monkeypatch.setattr(sca_module, "capturing_cuda_graph", lambda: True)
    assert sca.all_queries()
    captured = sca.plan(ref_cam, mask)
    assert captured.bounded and not captured.all_queries and captured.order.shape[1] == bound
    torch.testing.assert_close(
        sca(query, value, ref_cam, mask, SHAPES, START, captured), want, rtol=0, atol=1e-6
    )
    other = SpatialCrossAttention(16, 6, 4, 2, 8)  # another encoder layer takes the frame's bounded plan
    other(query, value, ref_cam, mask, SHAPES, START, captured)
    for fixed in ("exact", "all"):  # only "auto" takes a bound
        sca.query_bound = fixed
        assert not sca.plan(ref_cam, mask).bounded
    sca.query_bound = "auto"
    del sca.hit_bounds[key]  # nothing learnt: every query, as before
    assert sca.plan(ref_cam, mask).all_queries


def test_the_bound_only_grows_and_an_overflow_widens_it_to_every_query():
    sca, _, _, ref_cam, mask = make_case()
    key = (*mask.shape[:3], mask.device)
    sca.plan(ref_cam, mask)
    bound, flag = sca.hit_bounds[key]
    sca.plan(ref_cam[:, :, :, :, :], mask & False)  # a frame with no hits: the bound stays
    assert sca.hit_bounds[key] == (bound, flag)
    assert not sca.hit_overflow()
    flag.fill_(True)  # as a captured frame that hit more would
    assert sca.hit_overflow() and not bool(flag)
    assert sca.hit_bounds[key] == (mask.shape[2], flag)
    assert not sca.hit_overflow()


def test_padding_slots_scatter_into_a_spare_row_and_never_reach_a_query(monkeypatch):
    """The hit gather's padding slots (a (sample, camera) hitting fewer than K queries) point at the row
    B*Q that the scatter drops: whatever the attention returns there (NaN here) never reaches a query."""
    sca, query, value, ref_cam, mask = make_case()
    plan = sca.plan(ref_cam, mask)
    num_bq = query.shape[0] * query.shape[1]
    pad = ~plan.valid.reshape(-1)
    assert pad.any() and (plan.flat_index[pad] == num_bq).all() and (plan.flat_index[~pad] < num_bq).all()
    want = sca(query, value, ref_cam, mask, SHAPES, START, plan)
    real = type(sca.deformable_attention).forward

    def poisoned(module, *args):
        out = real(module, *args).clone()  # [B*N, K, C]
        out[~plan.valid] = float("nan")
        return out

    monkeypatch.setattr(type(sca.deformable_attention), "forward", poisoned)
    got = sca(query, value, ref_cam, mask, SHAPES, START, plan)
    assert torch.equal(got, want)
