"""The SCA as one op over the cameras (``fuse_cameras``): the same numbers as the hit gather, forward and
backward, through the op's PyTorch reference on the CPU ("on"; the kernel is checked against it in
tests/kernels/msda_cameras_kernel_cases.py); its plan reads nothing back; the choice is validated."""

from __future__ import annotations

import pytest
import torch
from test_sca_query_bound import SHAPES, START, make_case
from torch.utils._python_dispatch import TorchDispatchMode

from bevforge.nn.spatial_cross_attn import SpatialCrossAttention


def run(sca, fuse, query, value, ref_cam, mask):
    sca.fuse_cameras = fuse
    sca.zero_grad()
    q, v = query.clone().requires_grad_(), value.clone().requires_grad_()
    out = sca(q, v, ref_cam, mask, SHAPES, START)
    (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    return out.detach(), [q.grad, v.grad] + [p.grad for p in sca.parameters()]


def test_fused_matches_the_hit_gather_forward_and_backward():
    sca, *inputs = make_case()
    want, want_grads = run(sca, "off", *inputs)
    got, grads = run(sca, "on", *inputs)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    for g, w in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-5)
    assert torch.isfinite(got).all()  # the misses' far-off projections never leak


class _Reads(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


def test_fused_plan_holds_only_the_hits_and_reads_nothing_back():
    sca, query, value, ref_cam, mask = make_case()
    sca.fuse_cameras = "on"
    with _Reads() as reads:
        plan = sca.plan(ref_cam, mask)
    assert reads.count == 0
    assert plan.fused and plan.order is None and plan.refs is None
    assert torch.equal(plan.hit, mask.any(-1)) and torch.equal(
        plan.num_hits, mask.any(-1).sum(1).clamp(min=1)
    )
    sca.fuse_cameras = "off"
    with pytest.raises(ValueError, match="SCAPlan \\(fused=True"):
        sca(query, value, ref_cam, mask, SHAPES, START, plan=plan)  # a fused plan, an unfused call


def test_auto_is_off_on_a_plain_cpu_and_a_bad_mode_is_refused(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    sca = SpatialCrossAttention(16, 6, 4, 2, 8)
    assert sca.fuse_cameras == "auto" and not sca.fused(torch.zeros(1))
    with pytest.raises(ValueError, match="fuse_cameras='yes'"):
        SpatialCrossAttention(16, 6, 4, 2, 8, fuse_cameras="yes")
