"""Checks of the Triton MSDA kernel against the reference, shared by two runners.

- ``test_msda_kernels.py`` runs them in-process on CUDA (``@pytest.mark.gpu``), and
- on CPU it runs this file as a script in a subprocess with ``TRITON_INTERPRET=1`` (the interpreter must
  be switched on before Triton is imported, and torch imports Triton lazily in the pytest process).

Shape letters: B batch, S value tokens, M heads, D channels per head, Q queries, L levels, P points.
Tolerances (documented in benchmarks/README.md): fp32 kernel vs fp32 reference atol/rtol 1e-5 (forward)
and 1e-4 (gradients, fp32 atomics reorder sums); fp16 inputs vs the fp32 reference on the same rounded
inputs 2e-3; bf16 2e-2 (one output rounding to 8 mantissa bits, accumulation is fp32).
"""

from __future__ import annotations

import contextlib
import sys

import torch
from kernel_harness import run_cases

from bevforge.ops.dispatch import kernels
from bevforge.ops.msda import msda_reference, multi_scale_deformable_attention

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}
GRAD_TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 6e-2}


def make_inputs(
    device: str,
    dtype: torch.dtype = torch.float32,
    shapes: tuple[tuple[int, int], ...] = ((5, 7), (3, 4), (1, 2)),
    B: int = 2,
    M: int = 2,
    D: int = 5,
    Q: int = 9,
    P: int = 3,
    seed: int = 0,
    spread: float = 1.4,
):
    """(value, spatial_shapes, level_start_index, locations, weights); locations in [-0.2, 1.2] by default."""
    g = torch.Generator().manual_seed(seed)
    L = len(shapes)
    S = sum(h * w for h, w in shapes)
    spatial = torch.tensor(shapes, dtype=torch.long)  # [L, 2]
    start = torch.cat([spatial.new_zeros(1), (spatial[:, 0] * spatial[:, 1]).cumsum(0)[:-1]])  # [L]
    value = torch.randn(B, S, M, D, generator=g)
    locs = torch.rand(B, Q, M, L, P, 2, generator=g) * spread - (spread - 1) / 2
    weights = torch.rand(B, Q, M, L, P, generator=g)
    cast = [t.to(device=device, dtype=dtype) for t in (value, locs, weights)]
    return cast[0], spatial.to(device), start.to(device), cast[1], cast[2]


def _op():
    from bevforge.ops.msda.op import msda_op

    return msda_op


def _grads(fn, value, spatial, start, locs, weights, grad_out):
    leaves = [t.detach().clone().requires_grad_() for t in (value, locs, weights)]
    out = fn(leaves[0], spatial, start, leaves[1], leaves[2])
    return out, torch.autograd.grad(out, leaves, grad_out)


def _close(got: torch.Tensor, want: torch.Tensor, tol: float, label: str, atol: float | None = None) -> None:
    torch.testing.assert_close(
        got, want, atol=tol if atol is None else atol, rtol=tol, msg=lambda m: f"{label}: {m}"
    )


def _ref_fp32(value, spatial, start, locs, weights):
    return msda_reference(value.float(), spatial, start, locs.float(), weights.float())


def check_forward_fp32(device: str) -> None:
    args = make_inputs(device)
    torch.testing.assert_close(_op()(*args), msda_reference(*args), atol=1e-5, rtol=1e-5)


def check_forward_low_precision(device: str) -> None:
    for dtype in (torch.float16, torch.bfloat16):
        args = make_inputs(device, dtype)
        got = _op()(*args)
        assert got.dtype == dtype
        tol = TOL[dtype]
        _close(got.float(), _ref_fp32(*args), tol, f"{dtype}")


def check_backward_fp32(device: str) -> None:
    args = make_inputs(device, D=6, Q=11, P=4)
    grad_out = torch.randn(2, 11, 2 * 6, generator=torch.Generator().manual_seed(1)).to(device)
    out_k, g_k = _grads(_op(), *args, grad_out)
    out_r, g_r = _grads(msda_reference, *args, grad_out)
    torch.testing.assert_close(out_k, out_r, atol=1e-5, rtol=1e-5)
    for name, a, b in zip(("value", "locations", "weights"), g_k, g_r):
        _close(a, b, 1e-4, f"grad {name}")


def check_backward_low_precision(device: str) -> None:
    for dtype in (torch.float16, torch.bfloat16):
        args = make_inputs(device, dtype)
        grad_out = torch.randn(2, 9, 10, generator=torch.Generator().manual_seed(2)).to(device, dtype)
        _, g_k = _grads(_op(), *args, grad_out)
        _, g_r = _grads(_ref_fp32, *args, grad_out.float())
        tol = GRAD_TOL[dtype]
        for name, a, b in zip(("value", "locations", "weights"), g_k, g_r):
            assert a.dtype == dtype, f"grad {name} dtype {a.dtype}"
            # location grads scale with W, H (here <= 7): compare relative to their magnitude
            scale = max(1.0, b.abs().max().item())
            _close(a.float(), b.float(), tol, f"{dtype} grad {name}", atol=tol * scale)


def check_mixed_precision_value(device: str) -> None:
    """A bf16 ``value`` with fp32 locations and weights (what autocast leaves the encoder): fp32 output
    and location/weight grads equal to those of an fp32 copy of the value (the kernel reads each input in
    its own dtype into fp32), the value grad in bf16; the reference promotes the same way."""
    value, spatial, start, locs, weights = make_inputs(device, D=6, Q=11, P=4)
    value = value.to(torch.bfloat16)
    grad_out = torch.randn(2, 11, 2 * 6, generator=torch.Generator().manual_seed(4)).to(device)
    out_bf, g_bf = _grads(_op(), value, spatial, start, locs, weights, grad_out)
    out_32, g_32 = _grads(_op(), value.float(), spatial, start, locs, weights, grad_out)
    assert out_bf.dtype == torch.float32 and g_bf[0].dtype == torch.bfloat16, (out_bf.dtype, g_bf[0].dtype)
    torch.testing.assert_close(out_bf, out_32, atol=0, rtol=0)
    _close(g_bf[0].float(), g_32[0].to(torch.bfloat16).float(), 1e-2, "grad value (bf16 rounding)")
    for name, a, b in zip(("locations", "weights"), g_bf[1:], g_32[1:]):
        _close(a, b, 1e-6, f"grad {name}")  # the same fp32 sums (the value grad's atomics aside)
    ref = msda_reference(value, spatial, start, locs, weights)
    assert ref.dtype == torch.float32
    torch.testing.assert_close(
        ref, msda_reference(value.float(), spatial, start, locs, weights), atol=0, rtol=0
    )
    _close(out_bf, ref, 1e-5, "kernel vs reference")


def check_odd_sizes(device: str) -> None:
    """Non power-of-two D/P/Q, a 1x1 level, a tall and a wide level, far-away and boundary points."""
    shapes = ((1, 1), (6, 1), (1, 9), (4, 3))
    args = list(make_inputs(device, shapes=shapes, B=1, M=3, D=3, Q=37, P=5, seed=3, spread=2.0))
    locs = args[3]
    locs[0, 0] = 1e4  # far outside: int overflow must not wrap into the map
    locs[0, 1] = -1e4
    locs[0, 2] = 0.0  # the corner of the map (half-weight samples)
    locs[0, 3] = 1.0
    grad_out = torch.randn(1, 37, 9, generator=torch.Generator().manual_seed(4)).to(device)
    out_k, g_k = _grads(_op(), *args, grad_out)
    out_r, g_r = _grads(msda_reference, *args, grad_out)
    torch.testing.assert_close(out_k, out_r, atol=1e-5, rtol=1e-5)
    for name, a, b in zip(("value", "locations", "weights"), g_k, g_r):
        _close(a, b, 1e-4, f"grad {name}")


def check_opcheck(device: str) -> None:
    value, spatial, start, locs, weights = make_inputs(device, B=1, Q=5, P=2)
    args = (value.requires_grad_(), spatial, start, locs.requires_grad_(), weights.requires_grad_())
    torch.library.opcheck(torch.ops.bevforge.msda.default, args)
    grad_out = torch.randn(1, 5, 10, device=device)
    plain = tuple(a.detach() for a in args)
    torch.library.opcheck(torch.ops.bevforge.msda_backward.default, (grad_out, *plain))


def check_dispatch_picks_triton(device: str) -> None:
    args = make_inputs(device)
    with kernels("triton"):
        got = multi_scale_deformable_attention(*args)
        # float64 is not a kernel dtype: forced triton must say so
        try:
            multi_scale_deformable_attention(*[a.double() if a.is_floating_point() else a for a in args])
        except RuntimeError as e:
            assert "dtype" in str(e), e
        else:
            raise AssertionError("BEVFORGE_KERNELS=triton accepted float64")
    torch.testing.assert_close(got, _op()(*args), atol=0, rtol=0)


def check_bad_shapes(device: str) -> None:
    value, spatial, start, locs, weights = make_inputs(device)
    for bad in ((value[0], locs, weights), (value, locs[..., :1], weights), (value, locs, weights[:1])):
        try:
            _op()(bad[0], spatial, start, bad[1], bad[2])
        except ValueError as e:
            assert "msda:" in str(e), e
        else:
            raise AssertionError(f"shapes {[tuple(t.shape) for t in bad]} were accepted")


def check_compile_graph(device: str) -> None:
    """The op inside torch.compile (fake + autograd registrations), forward and backward."""
    backend = "inductor" if device == "cuda" else "aot_eager"  # CPU inductor would need a C++ build
    args = make_inputs(device, B=1, Q=6, P=2)

    def f(value, spatial, start, locs, weights):
        return _op()(value * 2, spatial, start, locs, weights.softmax(-1)).sum()

    leaves = [a.clone().requires_grad_() if a.is_floating_point() else a for a in args]
    compiled = torch.compile(f, backend=backend, fullgraph=True)
    loss = compiled(*leaves)
    loss.backward()
    ref = f(*args)
    torch.testing.assert_close(loss, ref, atol=1e-4, rtol=1e-4)
    assert leaves[0].grad is not None and leaves[3].grad is not None


def check_torch_export(device: str) -> None:
    """torch.export sees one ``bevforge.msda`` node (the fake registration gives its output shape)."""
    args = make_inputs(device, B=1, Q=6, P=2)

    class Attn(torch.nn.Module):
        def forward(self, value, spatial, start, locs, weights):
            return _op()(value, spatial, start, locs, weights)

    program = torch.export.export(Attn(), args)
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert any("bevforge.msda" in t for t in targets), targets
    torch.testing.assert_close(program.module()(*args), msda_reference(*args), atol=1e-5, rtol=1e-5)


@contextlib.contextmanager
def _counting_kernel_forwards():
    """``calls[0]``: how many times a Triton MSDA forward (either op) ran inside the block."""
    from bevforge.ops.msda import triton_msda

    real, calls = triton_msda.msda_forward, [0]  # both ops' forwards (locations and offsets)

    def counting(*args):
        calls[0] += 1
        return real(*args)

    triton_msda.msda_forward = counting
    try:
        yield calls
    finally:
        triton_msda.msda_forward = real


def check_sca_recompute(device: str) -> None:
    """SCA with its projections recomputed in backward (nn/recompute.py, "auto" where the kernel runs):
    the kernel's forward runs once per call (its output kept, not recomputed) and the outputs and
    gradients equal those of the kept SCA, on the hit gather and on the all-queries path."""
    from bevforge.nn.recompute import recompute_active
    from bevforge.nn.spatial_cross_attn import SpatialCrossAttention

    torch.manual_seed(0)
    B, N, Q, Z, C = 2, 3, 10, 2, 8
    shapes = ((3, 4), (2, 2))
    start = torch.tensor([0, 12], device=device)
    # the paths of the per-camera kernel (the camera kernel's: msda_cameras_kernel_cases.py)
    sca = SpatialCrossAttention(
        C, num_cams=N, num_heads=2, num_levels=2, num_points=4, dropout=0.0, fuse_cameras="off"
    ).to(device)
    with torch.no_grad():
        sca.deformable_attention.sampling_offsets.weight.normal_(0, 0.1)
        sca.deformable_attention.attention_weights.weight.normal_(0, 0.1)
    query = torch.randn(B, Q, C, device=device)
    value = torch.randn(B, N, 16, C, device=device)
    ref_cam = torch.rand(B, N, Q, Z, 2, device=device) * 1.2 - 0.1
    mask = torch.rand(B, N, Q, Z, device=device) > 0.5
    assert recompute_active("auto", value), "the kernel runs here: auto must recompute"
    with _counting_kernel_forwards() as calls:
        for bound in ("exact", "all"):
            results = {}
            for mode in ("off", "auto"):
                sca.query_bound, sca.recompute = bound, mode
                sca.zero_grad()
                q, v = query.clone().requires_grad_(), value.clone().requires_grad_()
                calls[0] = 0
                out = sca(q, v, ref_cam, mask, shapes, start)
                out.square().sum().backward()
                grads = [q.grad, v.grad] + [p.grad for p in sca.parameters()]
                results[mode] = (out.detach(), grads, calls[0])
            (want, want_grads, n_off), (got, grads, n_auto) = results["off"], results["auto"]
            assert n_off == n_auto == 1, f"{bound}: kernel forwards kept {n_off}, recomputed {n_auto}"
            _close(got, want, 1e-6, f"{bound} output")
            for i, (g, w) in enumerate(zip(grads, want_grads, strict=True)):
                _close(g, w, 1e-5, f"{bound} grad {i}")


def check_tsa_recompute(device: str) -> None:
    """TSA with its projections recomputed in backward ("auto" where the kernel runs): the kernel's forward
    runs once per call and the outputs and gradients equal those of the kept TSA (a batch mixing a
    previous BEV and a scene start)."""
    from bevforge.nn.recompute import recompute_active
    from bevforge.nn.temporal_self_attn import TemporalSelfAttention

    torch.manual_seed(0)
    B, H, W, C = 2, 3, 4, 8
    tsa = TemporalSelfAttention(C, num_heads=2, num_levels=1, num_points=2, dropout=0.0).to(device)
    with torch.no_grad():
        tsa.sampling_offsets.weight.normal_(0, 0.1)
        tsa.attention_weights.weight.normal_(0, 0.1)
    query, pos, prev = (torch.randn(B, H * W, C, device=device) for _ in range(3))
    ref = torch.rand(2 * B, H * W, 1, 2, device=device)
    has_prev = torch.tensor([True, False], device=device)
    start = torch.zeros(1, dtype=torch.long, device=device)
    assert recompute_active("auto", query), "the kernel runs here: auto must recompute"
    with _counting_kernel_forwards() as calls:
        results = {}
        for mode in ("off", "auto"):
            tsa.recompute = mode
            tsa.zero_grad()
            q, pv = query.clone().requires_grad_(), prev.clone().requires_grad_()
            calls[0] = 0
            out = tsa(q, pos, pv, has_prev, ref, ((H, W),), start)
            out.square().sum().backward()
            results[mode] = (out.detach(), [q.grad, pv.grad] + [p.grad for p in tsa.parameters()], calls[0])
        (want, want_grads, n_off), (got, grads, n_auto) = results["off"], results["auto"]
        assert n_off == n_auto == 1, f"kernel forwards kept {n_off}, recomputed {n_auto}"
        _close(got, want, 1e-6, "output")
        for i, (g, w) in enumerate(zip(grads, want_grads, strict=True)):
            _close(g, w, 1e-5, f"grad {i}")


def check_deterministic_mode_alert(device: str) -> None:
    """Under torch.use_deterministic_algorithms(True) the backward (value gradients by atomics) raises, and
    warns with warn_only (what --deterministic sets), as PyTorch's own atomics-based backwards do."""
    import warnings

    value, spatial, start, locs, weights = make_inputs(device, B=1, Q=4, P=2)
    leaves = [t.clone().requires_grad_() for t in (value, locs, weights)]
    try:
        torch.use_deterministic_algorithms(True)
        out = _op()(leaves[0], spatial, start, leaves[1], leaves[2])  # the forward has no atomics
        try:
            out.sum().backward()
        except RuntimeError as e:
            assert "bevforge::msda_backward" in str(e) and "BEVFORGE_KERNELS=reference" in str(e), e
        else:
            raise AssertionError("no error under torch.use_deterministic_algorithms(True)")
        torch.use_deterministic_algorithms(True, warn_only=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _op()(leaves[0], spatial, start, leaves[1], leaves[2]).sum().backward()
        messages = [str(w.message) for w in caught]
        assert any("bevforge::msda_backward" in m for m in messages), messages
        assert leaves[0].grad is not None
    finally:
        torch.use_deterministic_algorithms(False)


def make_offsets_inputs(device: str, offsets_dtype: torch.dtype, ref_levels: int, Z: int, seed: int = 5):
    """(value bf16, spatial, start, reference [B, Q, L_r, Z, 2] fp32, offsets [B, Q, M, L, P, 2] in cells,
    weights fp32) as autocast leaves the encoder's; some points far outside the map."""
    value, spatial, start, _, weights = make_inputs(device, B=2, M=2, D=5, Q=9, P=4, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    B, Q, M, L, P = weights.shape
    reference = (torch.rand(B, Q, ref_levels, Z, 2, generator=g) * 1.2 - 0.1).to(device)
    offsets = torch.randn(B, Q, M, L, P, 2, generator=g) * 2  # cells
    offsets[0, 0] = 1e4  # far outside: clamped before the int cast, all corners out
    offsets[1, 1, 0] = -3e3
    return value.to(torch.bfloat16), spatial, start, reference, offsets.to(device, offsets_dtype), weights


def _offsets_grads(fn, value, spatial, start, reference, offsets, weights, grad_out):
    leaves = [t.detach().clone().requires_grad_() for t in (value, offsets, weights)]
    out = fn(leaves[0], spatial, start, reference, leaves[1], leaves[2])
    return out, torch.autograd.grad(out, leaves, grad_out)


def _locations_path(value, spatial, start, reference, offsets, weights):
    from bevforge.ops.msda.shapes import offset_locations

    return _op()(value, spatial, start, offset_locations(reference, offsets, spatial), weights)


def check_offsets_match_locations(device: str) -> None:
    """``bevforge::msda_offsets`` (locations formed in the kernel) against the kernel on the locations
    ``offset_locations`` forms (``addcdiv``): the same output bitwise (the IEEE division), the same weight
    and offset gradients (the offsets' bitwise in fp32; bf16 ones within one bf16 step on the CPU, where
    the Triton interpreter truncates its fp32 -> bf16 casts instead of rounding them to nearest), for one
    reference row per level (TSA: Z = 1) and one for all levels (SCA: Z = 2 pillar points)."""
    from bevforge.ops.msda.op import msda_offsets_op

    combos = ((torch.float32, 3, 1), (torch.float32, 1, 2), (torch.bfloat16, 1, 2), (torch.bfloat16, 3, 4))
    for offsets_dtype, ref_levels, Z in combos:
        args = make_offsets_inputs(device, offsets_dtype, ref_levels, Z)
        label = f"offsets {offsets_dtype}, reference rows {ref_levels} x {Z}"
        grad_out = torch.randn(2, 9, 10, generator=torch.Generator().manual_seed(7)).to(device)
        out_k, g_k = _offsets_grads(msda_offsets_op, *args, grad_out)
        out_c, g_c = _offsets_grads(_locations_path, *args, grad_out)
        assert out_k.dtype == torch.float32 and g_k[1].dtype == offsets_dtype, (out_k.dtype, g_k[1].dtype)
        _close(out_k, out_c, 0.0, f"{label} output")
        _close(g_k[0].float(), g_c[0].float(), 1e-2, f"{label} grad value (atomics order, bf16)")
        _close(g_k[2], g_c[2], 0.0, f"{label} grad weights")
        exact = offsets_dtype == torch.float32 or device == "cuda"
        step = 0.0 if exact else 2.0**-7  # one bf16 step, relative
        _close(g_k[1].float(), g_c[1].float(), step, f"{label} grad offsets", atol=0.0)
        assert g_k[1].abs().sum() > 0, f"{label}: no offset gradient"


def check_offsets_dispatch(device: str) -> None:
    """``msda_from_offsets`` takes the offsets op where it can; a reference that needs a gradient (the
    decoder's) takes the locations path and gets it, as everything does with ``FORM_LOCATIONS_IN_KERNEL``
    off; the op itself refuses to drop that gradient."""
    from bevforge.ops.msda import msda_from_offsets
    from bevforge.ops.msda.op import msda_offsets_op

    value, spatial, start, reference, offsets, weights = make_offsets_inputs(device, torch.bfloat16, 3, 1)
    with kernels("triton"):
        torch.testing.assert_close(
            msda_from_offsets(value, spatial, start, reference, offsets, weights),
            msda_offsets_op(value, spatial, start, reference, offsets, weights),
            atol=0,
            rtol=0,
        )
        ref_leaf = reference.clone().requires_grad_()
        out = msda_from_offsets(value, spatial, start, ref_leaf, offsets, weights)
        (grad_ref,) = torch.autograd.grad(out.square().sum(), ref_leaf)
        want = _locations_path(value, spatial, start, reference.clone().requires_grad_(), offsets, weights)
        torch.testing.assert_close(out, want, atol=0, rtol=0)
        assert grad_ref.abs().sum() > 0
        # the switch back to the locations form: the same numbers through the locations op
        import bevforge.ops.msda as msda
        from bevforge.ops.msda import triton_msda

        real, forms = triton_msda.msda_forward, []
        # a forward called with a reference (its sixth argument) is the offsets kernel
        triton_msda.msda_forward = lambda *args: (
            forms.append(len(args) > 5 and args[5] is not None) or real(*args)
        )
        msda.FORM_LOCATIONS_IN_KERNEL = False
        try:
            back = msda_from_offsets(value, spatial, start, reference, offsets, weights)
        finally:
            msda.FORM_LOCATIONS_IN_KERNEL = True
            triton_msda.msda_forward = real
        assert forms == [False], f"FORM_LOCATIONS_IN_KERNEL=False: the forwards took a reference {forms}"
        torch.testing.assert_close(back, _locations_path(value, spatial, start, reference, offsets, weights))
    try:
        msda_offsets_op(
            value, spatial, start, reference.clone().requires_grad_(), offsets, weights
        ).sum().backward()
    except RuntimeError as e:
        assert "no gradient for its reference points" in str(e), e
    else:
        raise AssertionError("bevforge::msda_offsets dropped the reference points' gradient")


def check_offsets_compile_graph(device: str) -> None:
    """``msda_from_offsets`` inside torch.compile (one graph, the offsets op opaque), forward and backward,
    equal to eager; with both MSDA ops not yet imported (as in a process whose first MSDA call is
    compiled), once ``prime_kernel_ops`` ran (what ``train.compile`` and ``bench infer``'s compile mode
    do): the tracer cannot run the import itself."""
    from torch._dynamo.backends.registry import lookup_backend

    import bevforge.ops.msda as msda
    from bevforge.ops.dispatch import LazyOp, prime_kernel_ops
    from bevforge.ops.msda import msda_from_offsets

    inner = lookup_backend("inductor" if device == "cuda" else "aot_eager")  # CPU inductor needs a C++ build
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(str(gm.graph))
        return inner(gm, example_inputs)

    value, spatial, start, reference, offsets, weights = make_offsets_inputs(device, torch.float32, 1, 2)

    def f(value, offsets, weights):
        return msda_from_offsets(value * 2, spatial, start, reference, offsets, weights.softmax(-1)).sum()

    saved = msda._OP, msda._OFFSETS_OP
    fresh = msda._OP, msda._OFFSETS_OP = tuple(
        LazyOp(op.module, op.attribute, op.name) for op in saved
    )  # unimported
    try:
        prime_kernel_ops()
        assert all(op.op is not None for op in fresh), [op.error for op in fresh]
        leaves = [t.clone().requires_grad_() for t in (value.float(), offsets, weights)]
        loss = torch.compile(f, backend=backend, fullgraph=True)(*leaves)
        assert len(graphs) == 1 and "msda_offsets" in graphs[0], graphs
        loss.backward()
    finally:
        msda._OP, msda._OFFSETS_OP = saved
        LazyOp.instances = [op for op in LazyOp.instances if op not in fresh]
    plain = [t.clone().requires_grad_() for t in (value.float(), offsets, weights)]
    want = f(*plain)
    want.backward()
    torch.testing.assert_close(loss, want, atol=1e-4, rtol=1e-4)
    for got, ref in zip(leaves, plain, strict=True):
        torch.testing.assert_close(got.grad, ref.grad, atol=1e-4, rtol=1e-4)


def check_offsets_opcheck(device: str) -> None:
    """Both offsets ops pass ``torch.library.opcheck`` (schema, fake, autograd registration)."""
    value, spatial, start, reference, offsets, weights = make_offsets_inputs(device, torch.float32, 1, 2)
    value = value.float()
    args = (
        value.requires_grad_(),
        spatial,
        start,
        reference,
        offsets.requires_grad_(),
        weights.requires_grad_(),
    )
    torch.library.opcheck(torch.ops.bevforge.msda_offsets.default, args)
    grad_out = torch.randn(2, 9, 10, device=device)
    plain = tuple(a.detach() for a in args)
    torch.library.opcheck(torch.ops.bevforge.msda_offsets_backward.default, (grad_out, *plain))


def check_offsets_bad_shapes(device: str) -> None:
    from bevforge.ops.msda.op import msda_offsets_op

    value, spatial, start, reference, offsets, weights = make_offsets_inputs(device, torch.float32, 3, 1)
    bad_refs = (reference[:, :, :2], reference[:1], reference.expand(-1, -1, -1, 3, -1), reference.double())
    for bad in bad_refs:
        try:
            msda_offsets_op(value, spatial, start, bad, offsets, weights)
        except ValueError as e:
            assert "msda_offsets: reference" in str(e), e
        else:
            raise AssertionError(f"reference {tuple(bad.shape)} {bad.dtype} was accepted")


CASES = {
    "forward_fp32": check_forward_fp32,
    "forward_low_precision": check_forward_low_precision,
    "backward_fp32": check_backward_fp32,
    "backward_low_precision": check_backward_low_precision,
    "mixed_precision_value": check_mixed_precision_value,
    "odd_sizes": check_odd_sizes,
    "opcheck": check_opcheck,
    "dispatch_picks_triton": check_dispatch_picks_triton,
    "bad_shapes": check_bad_shapes,
    "compile_graph": check_compile_graph,
    "torch_export": check_torch_export,
    "sca_recompute": check_sca_recompute,
    "tsa_recompute": check_tsa_recompute,
    "deterministic_mode_alert": check_deterministic_mode_alert,
    "offsets_match_locations": check_offsets_match_locations,
    "offsets_dispatch": check_offsets_dispatch,
    "offsets_compile_graph": check_offsets_compile_graph,
    "offsets_opcheck": check_offsets_opcheck,
    "offsets_bad_shapes": check_offsets_bad_shapes,
}


if __name__ == "__main__":
    sys.exit(run_cases(CASES, sys.argv[1:]))
