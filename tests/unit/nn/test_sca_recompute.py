"""SCA with its projections recomputed in backward (nn/recompute.py): the same outputs and gradients on both
query paths; "auto" stays off where the MSDA runs as the reference; bad modes are refused. (With the MSDA
kernel, under the interpreter and on CUDA: tests/kernels/msda_kernel_cases.py ``sca_recompute``.)"""

from __future__ import annotations

import pytest
import torch
from test_sca_query_bound import SHAPES, START, make_case, run

from bevforge.nn.recompute import recompute_active
from bevforge.nn.spatial_cross_attn import SpatialCrossAttention


@pytest.mark.parametrize("bound", ["exact", "all"])
def test_recomputed_sca_matches_kept(bound):
    sca, *inputs = make_case()
    sca.recompute = "off"
    want, want_grads = run(sca, bound, *inputs, SHAPES)
    sca.recompute = "on"  # the reference MSDA: the whole region runs again in backward
    got, grads = run(sca, bound, *inputs, SHAPES)
    assert torch.equal(got, want)
    for g, w in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-6)


def test_auto_is_off_on_the_reference_path_and_without_grad(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("BEVFORGE_KERNELS", raising=False)
    t = torch.zeros(1)
    assert not recompute_active("auto", t)  # CPU: the reference MSDA
    assert recompute_active("on", t) and not recompute_active("off", t)
    with torch.no_grad():
        assert not recompute_active("on", t)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert recompute_active("auto", t)  # the op would run (the interpreter)
    monkeypatch.setenv("BEVFORGE_KERNELS", "reference")
    assert not recompute_active("auto", t)


def test_bad_mode_is_refused():
    with pytest.raises(ValueError, match="recompute='sometimes'"):
        SpatialCrossAttention(16, 6, 4, 2, 8, recompute="sometimes")


def test_recompute_under_autocast_after_a_cached_cast():
    """Training's shape: under one bf16 autocast region the history frames run the SCA without grad first
    (autocast caches its weights' casts), then the current frame records the region. The backward's
    recompute runs outside that region (no cached casts), so the region must not use autocast's cache, or
    the recomputed operator sequence differs from the recorded one and the selective checkpoint fails."""
    sca, query, value, ref_cam, mask = make_case()
    results = {}
    for mode in ("off", "on"):
        sca.recompute = mode
        sca.zero_grad()
        q = query.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            with torch.no_grad():
                sca(query, value, ref_cam, mask, SHAPES, START)  # the history pass
            out = sca(q, value, ref_cam, mask, SHAPES, START)
        out.float().square().sum().backward()
        results[mode] = (out.detach(), [q.grad] + [p.grad for p in sca.parameters()])
    (want, want_grads), (got, grads) = results["off"], results["on"]
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    for g, w in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("capturing", [False, True], ids=["eager", "under-capture"])
def test_the_region_draws_no_random_numbers_so_it_recomputes_under_capture(capturing, monkeypatch):
    """The SCA's region is recomputed without the RNG state (its dropout is outside, after the output
    projection): in training with dropout on, the same output and gradients as the kept SCA from the same
    seed, also while a CUDA graph is captured (emulated), where a region that draws random numbers is
    not recomputed at all."""
    import bevforge.nn.recompute as recompute

    monkeypatch.setattr(recompute, "capturing_cuda_graph", lambda: capturing)
    regions = []
    real = recompute.run_recomputed
    monkeypatch.setattr(recompute, "run_recomputed", lambda *a, **k: regions.append(k) or real(*a, **k))
    sca, *inputs = make_case()
    sca.dropout.p = 0.5
    sca.train()
    results = {}
    for mode in ("off", "on"):
        sca.recompute = mode
        torch.manual_seed(1)
        results[mode] = run(sca, "exact", *inputs, SHAPES)
    (want, want_grads), (got, grads) = results["off"], results["on"]
    assert regions == [{"draws_random": False}]
    assert torch.equal(got, want) and 0 < (got == inputs[0]).float().mean() < 1, "dropout drew"
    for g, w in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-6)
    t = torch.zeros(1)
    assert (
        recompute.recompute_active("on", t)
        and recompute.recompute_active("on", t, draws_random=True) != capturing
    )
