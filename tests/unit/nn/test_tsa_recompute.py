"""TSA with its projections recomputed in backward (nn/recompute.py, ``model.tsa_recompute``): the same
outputs and gradients as the kept TSA (with and without a previous BEV, a batch mixing both, the current
queue's values given), under bf16 autocast after a cached cast (the history pass); bad modes are refused.
(With the MSDA kernel, under the interpreter and on CUDA: tests/kernels/msda_kernel_cases.py
``tsa_recompute``.)"""

from __future__ import annotations

import pytest
import torch
from test_tsa_temporal_self_attn import inputs, make_tsa

from bevforge.nn.temporal_self_attn import TemporalSelfAttention


def _run(tsa, mode, query, pos, prev, has_prev, ref, shapes, start, current=None):
    """Output, gradients and the elements autograd saved outside recompute regions (a region's own saves
    go through the checkpoint's hooks, not these)."""
    tsa.recompute = mode
    tsa.zero_grad()
    leaves = [t.clone().requires_grad_() if t is not None else None for t in (query, pos, prev, current)]
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = tsa(leaves[0], leaves[1], leaves[2], has_prev, ref, shapes, start, leaves[3])
    (out.double() ** 2).sum().backward()
    grads = [t.grad for t in leaves if t is not None] + [p.grad for p in tsa.parameters()]
    return out.detach(), grads, sum(saved)


@pytest.mark.parametrize("case", ["prev", "no-prev", "mixed+current"])
def test_recomputed_tsa_matches_kept(case):
    torch.manual_seed(0)
    tsa = make_tsa().train()
    tsa.dropout.p = 0.0
    query, pos, prev, ref, shapes, start = inputs(2)
    has_prev, current = torch.tensor([True, True]), None
    if case == "no-prev":
        prev, has_prev = None, None
    elif case == "mixed+current":
        has_prev, current = torch.tensor([True, False]), torch.randn_like(query)
    args = (query, pos, prev, has_prev, ref, shapes, start, current)
    want, want_grads, kept = _run(tsa, "off", *args)
    got, grads, kept_outside = _run(tsa, "on", *args)  # the reference MSDA: the region runs again
    assert kept_outside < kept / 3, (kept_outside, kept)  # only the output projection's input
    assert torch.equal(got, want)
    assert all(g is not None for g in want_grads)
    for g, w in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-6)


def test_recompute_under_autocast_after_a_cached_cast():
    """As in training: the history frames run the TSA without grad in the same bf16 autocast region first
    (autocast caches the weights' casts); the recomputed region casts afresh, so backward replays it."""
    torch.manual_seed(0)
    tsa = make_tsa().train()
    tsa.dropout.p = 0.0
    query, pos, prev, ref, shapes, start = inputs(2)
    has_prev = torch.tensor([True, False])
    results = {}
    for mode in ("off", "on"):
        tsa.recompute = mode
        tsa.zero_grad()
        q = query.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            with torch.no_grad():
                tsa(query, pos, prev, has_prev, ref, shapes, start)  # the history pass
            out = tsa(q, pos, prev, has_prev, ref, shapes, start)
        out.float().square().sum().backward()
        results[mode] = (out.detach(), [q.grad] + [p.grad for p in tsa.parameters()])
    (want, want_grads), (got, grads) = results["off"], results["on"]
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    for g, w in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-2, atol=1e-2)


def test_bad_mode_is_refused():
    with pytest.raises(ValueError, match="recompute='always'"):
        TemporalSelfAttention(16, 4, 1, 2, recompute="always")


def test_the_region_draws_no_random_numbers_so_it_recomputes_under_capture(monkeypatch):
    """The TSA's region is recomputed without the RNG state (its dropout is outside the region): with
    dropout on and a CUDA-graph capture emulated, the same output and gradients as the kept TSA."""
    import bevforge.nn.recompute as recompute

    monkeypatch.setattr(recompute, "capturing_cuda_graph", lambda: True)
    torch.manual_seed(0)
    tsa = make_tsa().train()
    tsa.dropout.p = 0.5
    query, pos, prev, ref, shapes, start = inputs(2)
    args = (query, pos, prev, torch.tensor([True, False]), ref, shapes, start, None)
    torch.manual_seed(1)
    want, want_grads, kept = _run(tsa, "off", *args)
    torch.manual_seed(1)
    got, grads, kept_outside = _run(tsa, "on", *args)
    assert kept_outside < kept / 3, "recomputed under the capture"
    assert torch.equal(got, want)
    for g, w in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-6)
