"""Temporal self-attention: shapes, per-sample previous BEV, batch independence."""

from __future__ import annotations

import torch

from bevforge.nn.temporal_self_attn import TemporalSelfAttention

BEV_H, BEV_W, C = 4, 5, 16


def inputs(batch: int):
    q = BEV_H * BEV_W
    query = torch.randn(batch, q, C)
    pos = torch.randn(batch, q, C)
    prev = torch.randn(batch, q, C)
    ref = torch.rand(2 * batch, q, 1, 2)
    shapes = torch.tensor([[BEV_H, BEV_W]])
    start = torch.zeros(1, dtype=torch.long)
    return query, pos, prev, ref, shapes, start


def make_tsa() -> TemporalSelfAttention:
    tsa = TemporalSelfAttention(C, num_heads=4, num_levels=1, num_points=2).eval()
    with torch.no_grad():  # non-trivial offsets/weights so the inputs matter
        tsa.sampling_offsets.weight.normal_(0, 0.1)
        tsa.attention_weights.weight.normal_(0, 0.1)
    return tsa


def test_tsa_shape_and_gradient():
    torch.manual_seed(0)
    tsa = make_tsa().train()
    query, pos, prev, ref, shapes, start = inputs(2)
    query.requires_grad_(True)
    out = tsa(query, pos, prev, torch.tensor([True, True]), ref, shapes, start)
    assert out.shape == (2, BEV_H * BEV_W, C)
    out.sum().backward()
    assert query.grad is not None and tsa.sampling_offsets.weight.grad.abs().sum() > 0


def test_tsa_per_sample_prev_matches_single_sample_runs():
    torch.manual_seed(0)
    tsa = make_tsa()
    query, pos, prev, ref, shapes, start = inputs(2)
    out = tsa(query, pos, prev, torch.tensor([True, False]), ref, shapes, start)
    # sample 0 alone, with its previous BEV; refs are queue-major: [prev_b, cur_b]
    alone0 = tsa(query[:1], pos[:1], prev[:1], None, ref[[0, 2]], shapes, start)
    # sample 1 alone, without a previous BEV (official: the query stands in for it)
    alone1 = tsa(query[1:], pos[1:], None, None, ref[[1, 3]], shapes, start)
    torch.testing.assert_close(out[0], alone0[0])
    torch.testing.assert_close(out[1], alone1[0])
    # and the previous BEV really changes the result
    with_prev = tsa(query[1:], pos[1:], prev[1:], None, ref[[1, 3]], shapes, start)
    assert not torch.allclose(with_prev, alone1)


def test_tsa_current_value_only_for_samples_with_prev():
    """Official: with a previous BEV the current queue's values are the encoder's input queries."""
    torch.manual_seed(0)
    tsa = make_tsa()
    query, pos, prev, ref, shapes, start = inputs(2)
    init = torch.randn_like(query)
    has_prev = torch.tensor([True, False])
    with_init = tsa(query, pos, prev, has_prev, ref, shapes, start, current_value=init)
    without = tsa(query, pos, prev, has_prev, ref, shapes, start)
    assert not torch.allclose(with_init[0], without[0], atol=1e-4)
    torch.testing.assert_close(with_init[1], without[1])
