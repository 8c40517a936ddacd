"""BEV pooling plan + reference: vs a naive per-point loop, gradcheck, plan invariants, ONNX, dispatch."""

from __future__ import annotations

import pytest
import torch

from bevforge.ops.bev_pool import bev_pool, bev_pool_reference, plan_bev_pool


def _random_cells(B, N, D, fH, fW, H, W, outside=0.3, seed=0, cells=None):
    """Random cell indices in [0, H*W) (or among ``cells``), a fraction set to -1."""
    g = torch.Generator().manual_seed(seed)
    shape = (B, N, D, fH, fW)
    if cells is None:
        idx = torch.randint(0, H * W, shape, generator=g)
    else:
        pool = torch.tensor(cells)
        idx = pool[torch.randint(0, len(cells), shape, generator=g)]
    return torch.where(torch.rand(shape, generator=g) < outside, torch.full_like(idx, -1), idx)


def _inputs(B=2, N=2, D=3, fH=2, fW=3, C=5, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    depth = torch.rand(B, N, D, fH, fW, generator=g).softmax(2).to(dtype)
    context = torch.randn(B, N, fH, fW, C, generator=g).to(dtype)
    return depth, context


def naive_bev_pool(depth, context, cell_index, H, W):
    B, N, D, fH, fW = depth.shape
    out = torch.zeros(B, context.shape[-1], H, W, dtype=depth.dtype)
    for b in range(B):
        for n in range(N):
            for d in range(D):
                for h in range(fH):
                    for w in range(fW):
                        cell = int(cell_index[b, n, d, h, w])
                        if cell >= 0:
                            out[b, :, cell // W, cell % W] += depth[b, n, d, h, w] * context[b, n, h, w]
    return out


def test_reference_matches_naive_loop_with_empty_cells_and_outside_points():
    torch.manual_seed(0)
    H, W = 3, 4
    # only 5 of 12 cells used (the others must stay zero), 30 % of points outside
    cells = _random_cells(2, 2, 3, 2, 3, H, W, cells=[0, 5, 6, 11, 7])
    depth, context = _inputs()
    plan = plan_bev_pool(cells, H, W)
    got = bev_pool_reference(depth, context, plan)
    assert got.shape == (2, 5, H, W)
    torch.testing.assert_close(got, naive_bev_pool(depth, context, cells, H, W), atol=1e-12, rtol=0)
    assert got[:, :, 0, 1].abs().max() == 0  # cell 1 never hit


def test_plan_intervals_cover_exactly_the_valid_points():
    torch.manual_seed(0)
    H, W = 4, 5
    cells = _random_cells(2, 3, 4, 2, 3, H, W, outside=0.4, seed=3)
    plan = plan_bev_pool(cells, H, W)
    valid = (cells >= 0).reshape(-1)
    assert plan.num_points == int(valid.sum())
    assert sorted(plan.ranks_depth.tolist()) == torch.nonzero(valid).squeeze(1).tolist()
    assert bool((plan.ranks_bev[1:] >= plan.ranks_bev[:-1]).all())
    # intervals: contiguous, non-empty, covering [0, P), one per distinct cell, constant inside
    starts, lengths = plan.interval_starts, plan.interval_lengths
    assert starts[0] == 0 and int((starts + lengths)[-1]) == plan.num_points and bool((lengths > 0).all())
    torch.testing.assert_close(starts[1:], (starts + lengths)[:-1])
    assert plan.num_intervals == len(set(plan.ranks_bev.tolist()))
    for s, n in zip(starts.tolist(), lengths.tolist()):
        assert len(set(plan.ranks_bev[s : s + n].tolist())) == 1
    # every point's bev rank = b * H * W + its cell; feat rank drops the depth bin
    B, N, D, fH, fW = cells.shape
    b = plan.ranks_depth // (N * D * fH * fW)
    torch.testing.assert_close(plan.ranks_bev, b * H * W + cells.reshape(-1)[plan.ranks_depth])
    n = plan.ranks_depth // (D * fH * fW) % N
    hw = plan.ranks_depth % (fH * fW)
    torch.testing.assert_close(plan.ranks_feat, (b * N + n) * fH * fW + hw)
    # the by-feat regrouping: a permutation, sorted by feat rank, intervals constant inside
    assert sorted(plan.feat_order.tolist()) == list(range(plan.num_points))
    by_feat = plan.ranks_feat[plan.feat_order]
    assert bool((by_feat[1:] >= by_feat[:-1]).all())
    fs, fl = plan.feat_interval_starts, plan.feat_interval_lengths
    assert int(fl.sum()) == plan.num_points and len(fs) == len(set(by_feat.tolist()))
    for s, n in zip(fs.tolist(), fl.tolist()):
        assert len(set(by_feat[s : s + n].tolist())) == 1


def test_all_points_outside_gives_zeros_and_zero_grads():
    cells = torch.full((1, 2, 3, 2, 2), -1, dtype=torch.long)
    plan = plan_bev_pool(cells, 3, 3)
    assert plan.num_points == 0 and plan.num_intervals == 0
    depth, context = _inputs(B=1, N=2, D=3, fH=2, fW=2, C=3)
    depth.requires_grad_()
    context.requires_grad_()
    out = bev_pool_reference(depth, context, plan)
    assert out.shape == (1, 3, 3, 3) and out.abs().max() == 0
    out.sum().backward()
    assert depth.grad.abs().max() == 0 and context.grad.abs().max() == 0


def test_one_cell_with_many_points():
    cells = torch.full((2, 2, 4, 3, 3), 4, dtype=torch.long)  # every point in cell 4 = (row 1, col 1)
    depth, context = _inputs(B=2, N=2, D=4, fH=3, fW=3, C=7)
    plan = plan_bev_pool(cells, 2, 3)
    assert plan.num_intervals == 2 and plan.interval_lengths.tolist() == [72, 72]
    got = bev_pool_reference(depth, context, plan)
    want = torch.einsum("bndhw,bnhwc->bc", depth, context)  # [B, C]
    torch.testing.assert_close(got[:, :, 1, 1], want)
    got[:, :, 1, 1] = 0
    assert got.abs().max() == 0


def test_reference_gradcheck_fp64():
    torch.manual_seed(0)
    cells = _random_cells(2, 2, 3, 2, 2, 2, 3, seed=5)
    plan = plan_bev_pool(cells, 2, 3)
    depth, context = _inputs(B=2, N=2, D=3, fH=2, fW=2, C=3)
    inputs = (depth.requires_grad_(), context.requires_grad_())
    assert torch.autograd.gradcheck(lambda d, c: bev_pool_reference(d, c, plan), inputs, eps=1e-6, atol=1e-7)


def test_bad_inputs_say_what_to_fix():
    cells = _random_cells(1, 2, 3, 2, 2, 3, 3)
    with pytest.raises(ValueError, match="cell_index must be"):
        plan_bev_pool(cells[0], 3, 3)
    with pytest.raises(ValueError, match="integer tensor"):
        plan_bev_pool(cells.float(), 3, 3)
    with pytest.raises(ValueError, match=">= bev_h \\* bev_w = 9"):
        plan_bev_pool(cells + 9, 3, 3)
    plan = plan_bev_pool(cells, 3, 3)
    depth, context = _inputs(B=1, N=2, D=3, fH=2, fW=2, C=4)
    with pytest.raises(ValueError, match="rebuild the plan"):
        bev_pool(depth[:, :, :2], context, plan)
    with pytest.raises(ValueError, match="channels-last"):
        bev_pool(depth, context.permute(0, 1, 4, 2, 3), plan)
    with pytest.raises(ValueError, match="context must be a floating-point"):
        bev_pool(depth, context.long(), plan)


def test_mixed_dtypes_are_promoted():
    """Under autocast the depth softmax is fp32 and the context bf16/fp16: promoted, grads in each dtype."""
    plan = plan_bev_pool(_random_cells(1, 2, 3, 2, 2, 3, 3), 3, 3)
    depth, context = _inputs(B=1, N=2, D=3, fH=2, fW=2, C=4, dtype=torch.float32)
    context = context.bfloat16().requires_grad_()
    depth.requires_grad_()
    out = bev_pool(depth, context, plan)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, bev_pool_reference(depth, context.float(), plan), atol=0, rtol=0)
    out.sum().backward()
    assert depth.grad.dtype == torch.float32 and context.grad.dtype == torch.bfloat16


def test_plan_moves_between_devices_and_a_stray_plan_is_named():
    cells = _random_cells(1, 2, 3, 2, 2, 3, 3)
    plan = plan_bev_pool(cells, 3, 3)
    on_meta = plan.to("meta")
    assert (
        on_meta.ranks_feat.device.type == "meta"
        and on_meta.bev_w == 3
        and on_meta.num_points == plan.num_points
    )
    same = plan.to("cpu")
    torch.testing.assert_close(same.feat_order, plan.feat_order)
    assert same.batch_size == 1 and same.num_intervals == plan.num_intervals
    depth, context = _inputs(B=1, N=2, D=3, fH=2, fW=2, C=4)
    with pytest.raises(ValueError, match="plan on meta.*plan.to"):
        bev_pool(depth, context, on_meta)


def test_dispatch_auto_on_cpu_is_the_reference(monkeypatch):
    monkeypatch.delenv("BEVFORGE_KERNELS", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cells = _random_cells(2, 2, 3, 2, 3, 3, 4)
    plan = plan_bev_pool(cells, 3, 4)
    depth, context = _inputs(dtype=torch.float32)
    torch.testing.assert_close(
        bev_pool(depth, context, plan), bev_pool_reference(depth, context, plan), atol=0, rtol=0
    )


def test_dispatch_forced_triton_on_cpu_says_why(monkeypatch):
    monkeypatch.setenv("BEVFORGE_KERNELS", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    plan = plan_bev_pool(_random_cells(2, 2, 3, 2, 3, 3, 4), 3, 4)
    with pytest.raises(RuntimeError, match="BEVFORGE_KERNELS=triton.*cpu"):
        bev_pool(*_inputs(dtype=torch.float32), plan)
    monkeypatch.setenv("BEVFORGE_KERNELS", "cuda")
    with pytest.raises(ValueError, match="reference, triton or auto"):
        bev_pool(*_inputs(dtype=torch.float32), plan)


def test_reference_exports_to_onnx_with_a_fixed_plan(tmp_path):
    import onnx
    import onnxruntime as ort

    torch.manual_seed(0)
    H, W = 3, 4
    # ~200 of 288 points into 3 cells (~70 repeated indices each): onnxruntime ScatterND(add) lost updates on
    # repeated indices when threaded (issue 9); ScatterElements(add) must be exact on every run
    shape = dict(B=1, N=2, D=8, fH=3, fW=6)
    plan = plan_bev_pool(_random_cells(*shape.values(), H, W, seed=7, cells=[0, 5, 6]), H, W)

    class Splat(torch.nn.Module):
        def forward(self, depth: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
            return bev_pool(depth, context, plan)

    depth, context = _inputs(**shape, C=5, dtype=torch.float32)
    out = tmp_path / "bev_pool.onnx"
    torch.onnx.export(
        Splat(), (depth, context), str(out), input_names=["depth", "context"], opset_version=17, dynamo=False
    )  # the exporter's TracerWarnings (shape checks become constants) are expected with a fixed plan
    graph = onnx.load(str(out)).graph
    scatters = [n for n in graph.node if n.op_type == "ScatterElements"]
    assert scatters and all(a.s == b"add" for n in scatters for a in n.attribute if a.name == "reduction"), (
        "the splat must export as ScatterElements(reduction=add)"
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
    for seed in (9, 10, 10):  # new values through the same graph, one input twice
        depth2, context2 = _inputs(**shape, C=5, dtype=torch.float32, seed=seed)
        (got,) = sess.run(None, {"depth": depth2.numpy(), "context": context2.numpy()})
        want = bev_pool_reference(depth2, context2, plan)
        torch.testing.assert_close(torch.from_numpy(got), want, atol=1e-6, rtol=1e-5)
