"""SCA's static path (every camera attends every query) equals the hit-only gather, forward and backward;
a plan built once per frame gives what each call would build itself."""

from __future__ import annotations

import pytest
import torch

from bevforge.nn.spatial_cross_attn import SpatialCrossAttention

B, N, Q, Z, C = 2, 6, 12, 4, 16
SHAPES = ((3, 4), (2, 2))
START = torch.tensor([0, 12])


def make_case():
    torch.manual_seed(0)
    sca = SpatialCrossAttention(C, num_cams=N, num_heads=4, num_levels=2, num_points=8, dropout=0.0)
    with torch.no_grad():
        sca.deformable_attention.sampling_offsets.weight.normal_(0, 0.1)
        sca.deformable_attention.attention_weights.weight.normal_(0, 0.1)
    query = torch.randn(B, Q, C)
    value = torch.randn(B, N, 16, C)
    ref_cam = torch.rand(B, N, Q, Z, 2) * 1.2 - 0.1
    mask = torch.rand(B, N, Q, Z) > 0.7
    mask[0, :, 3] = False  # a query no camera sees
    mask[1, 2] = False  # a camera that sees nothing in sample 1
    ref_cam[~mask] = 1e4  # misses may project far off (never used)
    return sca, query, value, ref_cam, mask


def run(sca, bound, query, value, ref_cam, mask, shapes):
    sca.query_bound = bound
    sca.zero_grad()
    q, v = query.clone().requires_grad_(), value.clone().requires_grad_()
    out = sca(q, v, ref_cam, mask, shapes, START)
    (out * torch.linspace(-1, 1, C)).sum().backward()
    grads = [q.grad, v.grad] + [p.grad for p in sca.parameters()]
    return out.detach(), grads


def test_all_queries_path_matches_hit_gather():
    sca, *inputs = make_case()
    want, want_grads = run(sca, "exact", *inputs, torch.tensor(SHAPES))
    got_static, grads_static = run(sca, "exact", *inputs, SHAPES)
    got_all, grads_all = run(sca, "all", *inputs, SHAPES)
    assert torch.equal(got_static, want)  # static shapes: the same ops, bit for bit
    for g, w in zip(grads_static, want_grads):
        assert torch.equal(g, w)
    torch.testing.assert_close(got_all, want, rtol=0, atol=1e-6)
    for g, w in zip(grads_all, want_grads):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-6)
    assert torch.isfinite(got_all).all()  # the far-off misses never leak


def test_auto_is_exact_in_eager_mode_and_bad_bound_is_refused():
    assert not SpatialCrossAttention(C, N, 4, 2, 8).all_queries()
    assert SpatialCrossAttention(C, N, 4, 2, 8, query_bound="all").all_queries()
    with pytest.raises(ValueError, match="query_bound='some'"):
        SpatialCrossAttention(C, N, 4, 2, 8, query_bound="some")


@pytest.mark.parametrize("bound", ["exact", "all"])
def test_a_plan_shared_by_layers_equals_planning_per_call(bound):
    sca, query, value, ref_cam, mask = make_case()
    sca.query_bound = bound
    plan = sca.plan(ref_cam, mask)
    assert plan.all_queries == (bound == "all")
    for _ in range(2):  # reused, as by the encoder layers of one frame
        assert torch.equal(
            sca(query, value, ref_cam, mask, SHAPES, START, plan),
            sca(query, value, ref_cam, mask, SHAPES, START),
        )
    other = SpatialCrossAttention(C, N, 4, 2, 8, query_bound="exact" if bound == "all" else "all")
    with pytest.raises(ValueError, match="SCAPlan .* does not fit"):
        other(query, value, ref_cam, mask, SHAPES, START, plan)
