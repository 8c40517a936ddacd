"""Checks of the Triton BEV pooling kernels against the reference, shared by two runners.

- ``test_bev_pool_kernels.py`` runs them in-process on CUDA (``@pytest.mark.gpu``), and
- on CPU it runs this file as a script in a subprocess with ``TRITON_INTERPRET=1`` (the interpreter must
  be switched on before Triton is imported, and torch imports Triton lazily in the pytest process).

Shape letters: B batch, N cameras, D depth bins, fH x fW feature map, C channels, H x W BEV cells.
Tolerances: fp32 kernel vs fp32 reference atol/rtol 1e-5 (forward and gradients: only the summation
order differs); fp16 inputs vs the fp32 reference on the same rounded inputs 2e-3, bf16 2e-2 (one
output rounding, accumulation is fp32); gradients 1e-2 / 6e-2 relative to their largest magnitude.
"""

from __future__ import annotations

import sys

import torch
from kernel_harness import run_cases

from bevforge.ops.bev_pool import bev_pool, bev_pool_reference, plan_bev_pool
from bevforge.ops.dispatch import kernels

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}
GRAD_TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 6e-2}


def make_inputs(
    device: str,
    dtype: torch.dtype = torch.float32,
    B: int = 2,
    N: int = 2,
    D: int = 4,
    fH: int = 3,
    fW: int = 5,
    C: int = 6,
    H: int = 5,
    W: int = 6,
    outside: float = 0.3,
    num_cells: int | None = 17,
    seed: int = 0,
):
    """(depth, context, plan): points spread over ``num_cells`` random cells (others empty), some -1."""
    g = torch.Generator().manual_seed(seed)
    shape = (B, N, D, fH, fW)
    used = torch.randperm(H * W, generator=g)[: num_cells or H * W]  # [K] the non-empty cells
    cells = used[torch.randint(0, len(used), shape, generator=g)]
    cells = torch.where(torch.rand(shape, generator=g) < outside, torch.full_like(cells, -1), cells)
    depth = torch.randn(shape, generator=g).softmax(2)
    context = torch.randn(B, N, fH, fW, C, generator=g)
    plan = plan_bev_pool(cells.to(device), H, W)
    return depth.to(device, dtype), context.to(device, dtype), plan


def _op():
    from bevforge.ops.bev_pool.op import bev_pool_plan_op

    return bev_pool_plan_op


def _grads(fn, depth, context, plan, grad_out):
    leaves = [t.detach().clone().requires_grad_() for t in (depth, context)]
    out = fn(leaves[0], leaves[1], plan)
    return out, torch.autograd.grad(out, leaves, grad_out)


def _close(got: torch.Tensor, want: torch.Tensor, tol: float, label: str, atol: float | None = None) -> None:
    torch.testing.assert_close(
        got, want, atol=tol if atol is None else atol, rtol=tol, msg=lambda m: f"{label}: {m}"
    )


def _ref_fp32(depth, context, plan):
    return bev_pool_reference(depth.float(), context.float(), plan)


def _check_fwd_bwd(device: str, depth, context, plan, label: str) -> None:
    g = torch.Generator().manual_seed(1)
    grad_out = torch.randn(plan.batch_size, context.shape[-1], plan.bev_h, plan.bev_w, generator=g).to(device)
    out_k, g_k = _grads(_op(), depth, context, plan, grad_out)
    out_r, g_r = _grads(bev_pool_reference, depth, context, plan, grad_out)
    _close(out_k, out_r, 1e-5, f"{label} forward")
    for name, a, b in zip(("depth", "context"), g_k, g_r):
        _close(a, b, 1e-5, f"{label} grad {name}")


def check_forward_backward_fp32(device: str) -> None:
    _check_fwd_bwd(device, *make_inputs(device), "base")


def check_low_precision(device: str) -> None:
    for dtype in (torch.float16, torch.bfloat16):
        depth, context, plan = make_inputs(device, dtype, C=9)
        got = _op()(depth, context, plan)
        assert got.dtype == dtype
        _close(got.float(), _ref_fp32(depth, context, plan), TOL[dtype], f"{dtype} forward")
        g = torch.Generator().manual_seed(2)
        grad_out = torch.randn(tuple(got.shape), generator=g).to(device, dtype)
        _, g_k = _grads(_op(), depth, context, plan, grad_out)
        _, g_r = _grads(_ref_fp32, depth, context, plan, grad_out.float())
        tol = GRAD_TOL[dtype]
        for name, a, b in zip(("depth", "context"), g_k, g_r):
            assert a.dtype == dtype, f"grad {name} dtype {a.dtype}"
            scale = max(1.0, b.abs().max().item())
            _close(a.float(), b.float(), tol, f"{dtype} grad {name}", atol=tol * scale)


def check_odd_sizes(device: str) -> None:
    """C not a power of two over several channel blocks, odd maps, every cell used, batch 3."""
    _check_fwd_bwd(
        device, *make_inputs(device, B=3, N=1, D=3, fH=1, fW=7, C=67, H=3, W=1, num_cells=None), "C=67"
    )
    _check_fwd_bwd(
        device, *make_inputs(device, B=1, N=3, D=5, fH=2, fW=3, C=1, H=1, W=1, outside=0.5), "C=1 one cell"
    )


def check_all_points_outside(device: str) -> None:
    depth, context, plan = make_inputs(device, outside=1.0)
    assert plan.num_points == 0
    out, (gd, gc) = _grads(_op(), depth, context, plan, torch.ones(2, 6, 5, 6, device=device))
    assert out.shape == (2, 6, 5, 6) and out.abs().max() == 0
    assert gd.abs().max() == 0 and gc.abs().max() == 0


def check_one_cell_many_points(device: str) -> None:
    """300 points in one cell (several BLOCK_P chunks), plus the same pixel hit by all depth bins."""
    depth, context, plan = make_inputs(
        device, B=1, N=2, D=10, fH=3, fW=5, C=5, H=2, W=2, outside=0.0, num_cells=1
    )
    assert plan.num_intervals == 1 and int(plan.interval_lengths[0]) == 300
    _check_fwd_bwd(device, depth, context, plan, "one cell")


def check_deterministic(device: str) -> None:
    """No atomics anywhere (the context gradient is a per-pixel segment sum): bitwise equal reruns."""
    depth, context, plan = make_inputs(device, D=8, C=40, num_cells=5)
    grad_out = torch.randn(2, 40, 5, 6, generator=torch.Generator().manual_seed(3)).to(device)
    first = _grads(_op(), depth, context, plan, grad_out)
    second = _grads(_op(), depth, context, plan, grad_out)
    for a, b in zip((first[0], *first[1]), (second[0], *second[1])):
        assert torch.equal(a, b), "a rerun differs"


def check_opcheck(device: str) -> None:
    depth, context, plan = make_inputs(device, B=1, C=3)
    p = plan
    tensors = (
        p.ranks_depth,
        p.ranks_feat,
        p.ranks_bev,
        p.interval_starts,
        p.interval_lengths,
        p.feat_order,
        p.feat_interval_starts,
        p.feat_interval_lengths,
    )
    args = (depth.requires_grad_(), context.requires_grad_(), *tensors, p.batch_size, p.bev_h, p.bev_w)
    torch.library.opcheck(torch.ops.bevforge.bev_pool.default, args)
    grad_out = torch.randn(1, 3, p.bev_h, p.bev_w, device=device)
    bwd_args = (
        grad_out,
        depth.detach(),
        context.detach(),
        p.ranks_depth,
        p.ranks_feat,
        p.ranks_bev,
        p.feat_order,
        p.feat_interval_starts,
        p.feat_interval_lengths,
    )
    torch.library.opcheck(torch.ops.bevforge.bev_pool_backward.default, bwd_args)


def check_dispatch_picks_triton(device: str) -> None:
    depth, context, plan = make_inputs(device)
    with kernels("triton"):
        got = bev_pool(depth, context, plan)
        mixed = bev_pool(depth, context.bfloat16(), plan)  # autocast: fp32 depth, bf16 context -> fp32
        assert mixed.dtype == torch.float32, mixed.dtype
        want = bev_pool_reference(depth, context.bfloat16().float(), plan)
        torch.testing.assert_close(mixed, want, atol=1e-5, rtol=1e-5)
        try:  # float64 is not a kernel dtype: forced triton must say so
            bev_pool(depth.double(), context.double(), plan)
        except RuntimeError as e:
            assert "dtype" in str(e), e
        else:
            raise AssertionError("BEVFORGE_KERNELS=triton accepted float64")
    torch.testing.assert_close(got, _op()(depth, context, plan), atol=0, rtol=0)


def check_bad_shapes(device: str) -> None:
    depth, context, plan = make_inputs(device)
    for bad in ((depth[0], context), (depth, context[0]), (depth, context.double())):
        try:
            _op()(bad[0], bad[1], plan)
        except ValueError as e:
            assert "bev_pool:" in str(e), e
        else:
            raise AssertionError(f"shapes {[tuple(t.shape) for t in bad]} were accepted")


def check_compile_graph(device: str) -> None:
    """The op inside torch.compile (fake + autograd registrations), forward and backward."""
    backend = "inductor" if device == "cuda" else "aot_eager"  # CPU inductor would need a C++ build
    depth, context, plan = make_inputs(device, B=1)

    def f(logits, context):
        return _op()(logits.softmax(2), context * 2, plan).square().sum()

    leaves = [depth.clone().requires_grad_(), context.clone().requires_grad_()]
    loss = torch.compile(f, backend=backend, fullgraph=True)(*leaves)
    loss.backward()
    ref_leaves = [depth.clone().requires_grad_(), context.clone().requires_grad_()]
    ref = (bev_pool_reference(ref_leaves[0].softmax(2), ref_leaves[1] * 2, plan)).square().sum()
    ref.backward()
    torch.testing.assert_close(loss, ref, atol=1e-4, rtol=1e-4)
    for a, b in zip(leaves, ref_leaves):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-4, rtol=1e-4)


def check_torch_export(device: str) -> None:
    """torch.export sees one ``bevforge.bev_pool`` node (the fake registration gives its output shape)."""
    depth, context, plan = make_inputs(device, B=1)

    class Splat(torch.nn.Module):
        def forward(self, depth, context):
            return _op()(depth, context, plan)

    program = torch.export.export(Splat(), (depth, context))
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert any("bevforge.bev_pool" in t for t in targets), targets
    want = bev_pool_reference(depth, context, plan)
    torch.testing.assert_close(program.module()(depth, context), want, atol=1e-5, rtol=1e-5)


CASES = {
    "forward_backward_fp32": check_forward_backward_fp32,
    "low_precision": check_low_precision,
    "odd_sizes": check_odd_sizes,
    "all_points_outside": check_all_points_outside,
    "one_cell_many_points": check_one_cell_many_points,
    "deterministic": check_deterministic,
    "opcheck": check_opcheck,
    "dispatch_picks_triton": check_dispatch_picks_triton,
    "bad_shapes": check_bad_shapes,
    "compile_graph": check_compile_graph,
    "torch_export": check_torch_export,
}


if __name__ == "__main__":
    sys.exit(run_cases(CASES, sys.argv[1:]))
