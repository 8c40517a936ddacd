"""Checks of the Triton MSDA camera kernel (``bevforge::msda_cameras``) against its reference, shared by
two runners (``test_msda_cameras_kernels.py``: in-process on CUDA, and this file as a script on CPU under
``TRITON_INTERPRET=1``).

Shape letters: B batch, N cameras, S value tokens, M heads, D channels per head, Q queries, L levels,
P points, Z pillar points. Tolerances as the MSDA kernel's (msda_kernel_cases.py): fp32 1e-5 forward,
1e-4 gradients (the kernel sums the cameras in another order and with fp32 atomics); low precision
against the fp32 reference on the same rounded inputs.
"""

from __future__ import annotations

import sys

import torch
from kernel_harness import run_cases

from bevforge.ops.dispatch import kernels
from bevforge.ops.msda import msda_cameras
from bevforge.ops.msda.cameras import msda_cameras_reference

SHAPES = ((5, 7), (3, 4), (1, 2))


def make_inputs(
    device: str,
    value_dtype: torch.dtype = torch.float32,
    offsets_dtype: torch.dtype = torch.float32,
    shapes: tuple[tuple[int, int], ...] = SHAPES,
    B: int = 2,
    N: int = 3,
    M: int = 2,
    D: int = 5,
    Q: int = 11,
    P: int = 4,
    Z: int = 2,
    seed: int = 0,
):
    """(value [B, N, S, M, D], spatial [L, 2], start [L], reference [B, N, Q, Z, 2] fp32, hit [B, N, Q],
    offsets [B, Q, M, L, P, 2] cells, weights [B, Q, M, L, P] fp32): about half the (camera, query) pairs
    hit, one query hits no camera, one camera of sample 1 misses every query, misses project far off."""
    g = torch.Generator().manual_seed(seed)
    L = len(shapes)
    S = sum(h * w for h, w in shapes)
    spatial = torch.tensor(shapes, dtype=torch.long)  # [L, 2]
    start = torch.cat([spatial.new_zeros(1), (spatial[:, 0] * spatial[:, 1]).cumsum(0)[:-1]])  # [L]
    value = torch.randn(B, N, S, M, D, generator=g)
    reference = torch.rand(B, N, Q, Z, 2, generator=g) * 1.2 - 0.1
    hit = torch.rand(B, N, Q, generator=g) > 0.5
    hit[0, :, 1] = False  # a query no camera sees
    if B > 1 and N > 1:
        hit[1, 1] = False  # a camera that sees nothing in sample 1
    reference[~hit] = 1e4  # what a miss may project to: never read
    offsets = torch.randn(B, Q, M, L, P, 2, generator=g) * 2  # cells
    offsets[0, 0, 0] = 1e4  # far outside: all corners out
    weights = torch.rand(B, Q, M, L, P, generator=g)
    return (
        value.to(device, value_dtype),
        spatial.to(device),
        start.to(device),
        reference.to(device),
        hit.to(device),
        offsets.to(device, offsets_dtype),
        weights.to(device),
    )


def _op():
    from bevforge.ops.msda.cameras_op import msda_cameras_op

    return msda_cameras_op


def _grads(fn, value, spatial, start, reference, hit, offsets, weights, grad_out):
    leaves = [t.detach().clone().requires_grad_() for t in (value, offsets, weights)]
    out = fn(leaves[0], spatial, start, reference, hit, leaves[1], leaves[2])
    return out, torch.autograd.grad(out, leaves, grad_out)


def _fp32(args):
    value, spatial, start, reference, hit, offsets, weights = args
    return value.float(), spatial, start, reference, hit, offsets.float(), weights


def _close(got: torch.Tensor, want: torch.Tensor, tol: float, label: str, atol: float | None = None) -> None:
    torch.testing.assert_close(
        got, want, atol=tol if atol is None else atol, rtol=tol, msg=lambda m: f"{label}: {m}"
    )


def _grad_out(args, seed: int = 1) -> torch.Tensor:
    value, offsets = args[0], args[5]
    B, Q, M = offsets.shape[:3]
    return torch.randn(B, Q, M * value.shape[-1], generator=torch.Generator().manual_seed(seed)).to(
        value.device
    )


def check_forward_backward_fp32(device: str) -> None:
    for Z in (1, 4):
        args = make_inputs(device, Z=Z, seed=Z)
        out_k, g_k = _grads(_op(), *args, _grad_out(args))
        out_r, g_r = _grads(msda_cameras_reference, *args, _grad_out(args))
        assert out_k.dtype == torch.float32
        _close(out_k, out_r, 1e-5, f"Z={Z} output")
        for name, a, b in zip(("value", "offsets", "weights"), g_k, g_r, strict=True):
            _close(a, b, 1e-4, f"Z={Z} grad {name}")
        assert g_k[1].abs().sum() > 0 and g_k[0].abs().sum() > 0


def check_misses_read_and_get_nothing(device: str) -> None:
    """A query no camera hits gives zero (and zero offset and weight gradients); a camera that misses every
    query of a sample gets a zero value gradient, even where its value map holds NaN; misses that projected
    to NaN are never read (the kernel and the reference)."""
    value, spatial, start, reference, hit, offsets, weights = make_inputs(device)
    value[1, 1] = float("nan")  # camera 1 of sample 1 misses everything: never read
    reference[~hit] = float("nan")  # what a miss projected to: never read either
    args = (value, spatial, start, reference, hit, offsets, weights)
    out, (g_value, g_off, g_w) = _grads(_op(), *args, _grad_out(args))
    want, want_grads = _grads(msda_cameras_reference, *args, _grad_out(args))
    _close(out, want, 1e-5, "output vs the reference")
    for got, ref in zip((g_value, g_off, g_w), want_grads, strict=True):
        _close(got, ref, 1e-4, "grads vs the reference (finite: assert_close refuses NaN)")
    assert torch.isfinite(out).all()
    assert out[0, 1].abs().max() == 0 and g_off[0, 1].abs().max() == 0 and g_w[0, 1].abs().max() == 0
    assert g_value[1, 1].abs().max() == 0
    assert torch.isfinite(g_value).all() and torch.isfinite(g_off).all()


def check_low_precision(device: str) -> None:
    """bf16 / fp16 value and offsets with fp32 reference points and weights (as autocast leaves the SCA):
    fp32 output, gradients in the inputs' dtypes, close to the fp32 reference on the same rounded inputs."""
    for dtype, tol in ((torch.bfloat16, 2e-2), (torch.float16, 2e-3)):
        args = make_inputs(device, dtype, dtype)
        out_k, g_k = _grads(_op(), *args, _grad_out(args))
        out_r, g_r = _grads(msda_cameras_reference, *_fp32(args), _grad_out(args))
        assert out_k.dtype == torch.float32 and g_k[0].dtype == dtype and g_k[1].dtype == dtype
        _close(out_k, out_r, 1e-5, f"{dtype} output (fp32 sums of the same inputs)")
        for name, a, b in zip(("value", "offsets", "weights"), g_k, g_r, strict=True):
            scale = max(1.0, b.abs().max().item())
            _close(a.float(), b.float(), tol * 3, f"{dtype} grad {name}", atol=tol * scale)


def check_odd_sizes(device: str) -> None:
    """One camera, seven cameras, a 1x1 level, points and queries not powers of two, one head."""
    for N, M, D, Q, P, shapes in ((1, 1, 3, 37, 3, ((1, 1), (6, 1))), (7, 3, 7, 70, 5, ((4, 3), (1, 9)))):
        args = make_inputs(device, shapes=shapes, B=1, N=N, M=M, D=D, Q=Q, P=P, Z=1, seed=N)
        out_k, g_k = _grads(_op(), *args, _grad_out(args))
        out_r, g_r = _grads(msda_cameras_reference, *args, _grad_out(args))
        _close(out_k, out_r, 1e-5, f"N={N} output")
        for name, a, b in zip(("value", "offsets", "weights"), g_k, g_r, strict=True):
            _close(a, b, 1e-4, f"N={N} grad {name}")


def check_matches_per_camera_offsets_kernel(device: str) -> None:
    """One camera: the offsets kernel (``bevforge::msda_offsets``) on that camera, bitwise (the same
    locations and the same sums in the same order)."""
    from bevforge.ops.msda.op import msda_offsets_op

    value, spatial, start, reference, hit, offsets, weights = make_inputs(device, N=1, Q=9)
    hit[:] = True
    reference = torch.rand_like(reference)
    got = _op()(value, spatial, start, reference, hit, offsets, weights)
    want = msda_offsets_op(value[:, 0], spatial, start, reference[:, 0, :, None], offsets, weights)
    _close(got, want, 0.0, "one camera vs msda_offsets")


def check_grid_tiles(device: str) -> None:
    """Queries walked in tiles of their grid (``grid_w``; widths and heights that are not multiples of
    the tile's) give bitwise the result of runs of consecutive queries, forward and backward (each query's
    sums are the same; a tile only changes which programs hold it); a width that does not divide Q is
    refused."""
    from bevforge.ops.msda import triton_cameras

    args = make_inputs(device, shapes=((3, 4), (1, 2)), M=1, Q=35, seed=7)
    grad_out = _grad_out(args)
    want, want_grads = _grads(_op(), *args, grad_out)
    saved = dict(triton_cameras.LAUNCH)
    try:
        for grid_w, launch in ((7, None), (5, (16, 2)), (35, (32, 4))):
            triton_cameras.LAUNCH.update(fwd=launch, bwd=launch)
            out, grads = _grads(lambda *a, w=grid_w: _op()(*a, w), *args, grad_out)
            _close(out, want, 0.0, f"grid_w={grid_w} {launch} output")
            _close(grads[1], want_grads[1], 0.0, f"grid_w={grid_w} {launch} grad offsets")
            _close(grads[2], want_grads[2], 0.0, f"grid_w={grid_w} {launch} grad weights")
            _close(grads[0], want_grads[0], 1e-5, f"grid_w={grid_w} {launch} grad value (atomics order)")
    finally:
        triton_cameras.LAUNCH.update(saved)
    try:
        _op()(*args, 10)
    except ValueError as e:
        assert "grid_w=10" in str(e), e
    else:
        raise AssertionError("grid_w=10 accepted for 35 queries")


def check_opcheck(device: str) -> None:
    value, spatial, start, reference, hit, offsets, weights = make_inputs(device, B=1, Q=5)
    args = (value.requires_grad_(), spatial, start, reference, hit, offsets.requires_grad_(),
            weights.requires_grad_())  # fmt: skip
    torch.library.opcheck(torch.ops.bevforge.msda_cameras.default, (*args, 5))  # a 5-wide grid (Q = 5)
    grad_out = torch.randn(1, 5, 10, device=device)
    plain = tuple(a.detach() for a in args)
    torch.library.opcheck(torch.ops.bevforge.msda_cameras_backward.default, (grad_out, *plain, 0))


def check_dispatch(device: str) -> None:
    """``msda_cameras`` takes the kernel here; forced Triton refuses float64; the reference choice runs the
    reference; the op refuses a reference point that needs a gradient."""
    args = make_inputs(device)
    with kernels("triton"):
        torch.testing.assert_close(msda_cameras(*args), _op()(*args), atol=0, rtol=0)
        try:
            msda_cameras(*[a.double() if a.is_floating_point() and a is not args[3] else a for a in args])
        except RuntimeError as e:
            assert "dtype" in str(e), e
        else:
            raise AssertionError("BEVFORGE_KERNELS=triton accepted float64")
    with kernels("reference"):
        torch.testing.assert_close(msda_cameras(*args), msda_cameras_reference(*args), atol=0, rtol=0)
    value, spatial, start, reference, hit, offsets, weights = args
    try:
        _op()(
            value, spatial, start, reference.clone().requires_grad_(), hit, offsets, weights
        ).sum().backward()
    except RuntimeError as e:
        assert "no gradient for its reference points" in str(e), e
    else:
        raise AssertionError("bevforge::msda_cameras dropped the reference points' gradient")


def check_bad_shapes(device: str) -> None:
    value, spatial, start, reference, hit, offsets, weights = make_inputs(device)
    bad_calls = (
        (value[:, 0], reference, hit, offsets, weights),
        (value, reference[:, :2], hit, offsets, weights),
        (value, reference.double(), hit, offsets, weights),
        (value, reference, hit[:, :, :3], offsets, weights),
        (value, reference, hit.float(), offsets, weights),
        (value, reference, hit, offsets[..., :1], weights),
        (value, reference[..., :1, :].expand(-1, -1, -1, 3, -1), hit, offsets, weights),  # Z=3, P=4
    )
    for v, r, h, o, w in bad_calls:
        try:
            _op()(v, spatial, start, r, h, o, w)
        except ValueError as e:
            assert "msda_cameras:" in str(e), e
        else:
            raise AssertionError(f"shapes {[tuple(t.shape) for t in (v, r, h, o, w)]} were accepted")


def check_compile_and_export(device: str) -> None:
    """One opaque op inside torch.compile (fullgraph, forward and backward equal to eager) and in
    torch.export's graph."""
    backend = "inductor" if device == "cuda" else "aot_eager"  # CPU inductor would need a C++ build
    value, spatial, start, reference, hit, offsets, weights = make_inputs(device, B=1, Q=6)

    def f(value, offsets, weights):
        return _op()(value * 2, spatial, start, reference, hit, offsets, weights.softmax(-1)).sum()

    leaves = [t.clone().requires_grad_() for t in (value, offsets, weights)]
    loss = torch.compile(f, backend=backend, fullgraph=True)(*leaves)
    loss.backward()
    plain = [t.clone().requires_grad_() for t in (value, offsets, weights)]
    want = f(*plain)
    want.backward()
    torch.testing.assert_close(loss, want, atol=1e-4, rtol=1e-4)
    for got, ref in zip(leaves, plain, strict=True):
        torch.testing.assert_close(got.grad, ref.grad, atol=1e-4, rtol=1e-4)

    class Attn(torch.nn.Module):
        def forward(self, value, reference, hit, offsets, weights):
            return _op()(value, spatial, start, reference, hit, offsets, weights)

    inputs = (value, reference, hit, offsets, weights)
    program = torch.export.export(Attn(), inputs)
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert any("bevforge.msda_cameras" in t for t in targets), targets
    torch.testing.assert_close(program.module()(*inputs), _op()(value, spatial, start, *inputs[1:]))


def check_sca_fused_matches_gather(device: str) -> None:
    """The SCA fused over the cameras (the default where the kernel runs) against its hit gather and its
    all-queries path (kernel on each camera): outputs and every gradient, with the projections recomputed
    and kept; the fused op's forward runs once per call either way."""
    from bevforge.nn.spatial_cross_attn import SpatialCrossAttention
    from bevforge.ops.msda import triton_cameras

    torch.manual_seed(0)
    B, N, Q, Z, C = 2, 3, 10, 2, 8
    shapes = ((3, 4), (2, 2))
    start = torch.tensor([0, 12], device=device)
    sca = SpatialCrossAttention(C, num_cams=N, num_heads=2, num_levels=2, num_points=4, dropout=0.0)
    sca = sca.to(device)
    with torch.no_grad():
        sca.deformable_attention.sampling_offsets.weight.normal_(0, 0.1)
        sca.deformable_attention.attention_weights.weight.normal_(0, 0.1)
    query = torch.randn(B, Q, C, device=device)
    value = torch.randn(B, N, 16, C, device=device)
    ref_cam = torch.rand(B, N, Q, Z, 2, device=device) * 1.2 - 0.1
    mask = torch.rand(B, N, Q, Z, device=device) > 0.6
    mask[0, :, 2] = False  # a query no camera sees
    assert sca.fused(value), "fuse_cameras='auto' must take the kernel where it runs"
    real, calls = triton_cameras.msda_cameras_forward, [0]

    def counting(*args):
        calls[0] += 1
        return real(*args)

    results = {}
    triton_cameras.msda_cameras_forward = counting
    try:
        modes = (
            ("off", "exact", "off"),
            ("off", "all", "off"),
            ("auto", "auto", "off"),
            ("auto", "auto", "auto"),
        )
        for fuse, bound, recompute in modes:
            sca.fuse_cameras, sca.query_bound, sca.recompute = fuse, bound, recompute
            sca.zero_grad()
            q, v = query.clone().requires_grad_(), value.clone().requires_grad_()
            calls[0] = 0
            out = sca(q, v, ref_cam, mask, shapes, start)
            out.square().sum().backward()
            grads = [q.grad, v.grad] + [p.grad for p in sca.parameters()]
            results[(fuse, bound, recompute)] = (out.detach(), grads, calls[0])
    finally:
        triton_cameras.msda_cameras_forward = real
    want, want_grads, n = results[("off", "exact", "off")]
    assert n == 0, "the gather path ran the camera kernel"
    for key, (got, grads, n) in results.items():
        if key[0] == "auto":
            assert n == 1, f"{key}: the camera kernel's forward ran {n} times"
        _close(got, want, 1e-5, f"{key} output")
        for i, (g, w) in enumerate(zip(grads, want_grads, strict=True)):
            _close(g, w, 1e-4, f"{key} grad {i}")


CASES = {
    "forward_backward_fp32": check_forward_backward_fp32,
    "misses_read_and_get_nothing": check_misses_read_and_get_nothing,
    "low_precision": check_low_precision,
    "odd_sizes": check_odd_sizes,
    "matches_per_camera_offsets_kernel": check_matches_per_camera_offsets_kernel,
    "grid_tiles": check_grid_tiles,
    "opcheck": check_opcheck,
    "dispatch": check_dispatch,
    "bad_shapes": check_bad_shapes,
    "compile_and_export": check_compile_and_export,
    "sca_fused_matches_gather": check_sca_fused_matches_gather,
}


if __name__ == "__main__":
    sys.exit(run_cases(CASES, sys.argv[1:]))
