"""BEVEncoder.project_frames: every eager frame projected into its cameras at the start of a forward, its
SCA gather size copied back without waiting (on a GPU each frame's own read waits for the backbone's
queued kernels). The sizes are the ones the plans would read, the forward is unchanged with them, and the
plans then read nothing back. On the CPU, where a read costs no wait, the forward reads as before; the
tests take the GPU's path by patching that check."""

from __future__ import annotations

import copy

import pytest
import torch
from test_bevformer_forward import debug_model, random_batch
from torch.utils._python_dispatch import TorchDispatchMode

import bevforge.models.bev_encoder as enc
from bevforge.nn.spatial_cross_attn import SpatialCrossAttention

SCENES = [["a", "a", "a", "a"], ["x", "y", "y", "y"], ["p", "p", "p", "q"]]


def _batch():
    """A batch whose frames see the BEV differently (the focal lengths scaled per frame): K differs."""
    batch = random_batch(SCENES)
    zoom = torch.tensor([1.0, 0.8, 1.3, 0.6])[None, :, None, None, None]  # [1, T, 1, 1, 1]
    batch.lidar2img[:, :, :, :2, :] *= zoom  # rows u, v of [B, T, N, 4, 4] (w: the depth row, kept)
    return batch


class _Reads(TorchDispatchMode):
    """Counts host reads of one tensor element (``.item()``, ``int(t)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def _plans(model, monkeypatch) -> list[int]:
    """Records the gather size K of every plan the model's SCA builds."""
    sizes: list[int] = []
    real = SpatialCrossAttention.plan

    def plan(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        if not out.all_queries:
            sizes.append(out.order.shape[1])
        return out

    monkeypatch.setattr(SpatialCrossAttention, "plan", plan)
    return sizes


def test_cpu_reads_per_frame_as_before():
    model = debug_model().eval()
    batch = _batch()
    assert model.encoder.project_frames(batch.lidar2img, (64, 96), range(4)) is None


@pytest.mark.parametrize("training", [True, False])
def test_lengths_read_first_are_the_plans_and_change_nothing(training, monkeypatch):
    torch.manual_seed(0)
    model = debug_model().train(training)
    batch = _batch()
    sizes = _plans(model, monkeypatch)

    def forward(net):  # training mode: dropout, grid mask and the debug BNs' statistics move
        torch.manual_seed(1)
        with torch.no_grad(), _Reads() as reads:
            preds, _ = copy.deepcopy(net)(batch)
        return preds, reads

    want, reads = forward(model)
    assert len(sizes) == 4 and reads.count >= 4, "each frame's plan read its K"
    per_frame = list(sizes)

    monkeypatch.setattr(enc, "read_costs_a_wait", lambda device: True)
    projections = model.encoder.project_frames(batch.lidar2img, (64, 96), range(4))
    assert [projections.get(t)[2] for t in range(4)] == per_frame and projections.get(4) is None
    assert len(set(per_frame)) > 1, "the rig differs per frame (a test that could not tell frames apart)"
    sizes.clear()
    got, reads = forward(model)
    assert sizes == per_frame
    assert reads.count == reads_without_plans(model, batch), "the plans read nothing back"
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)


def reads_without_plans(model, batch) -> int:
    """The forward's host reads other than the plans' (grid mask, ...): with every SCA on its static path."""
    bounds = {}
    for m in model.modules():
        if isinstance(m, SpatialCrossAttention):
            bounds[m], m.query_bound = m.query_bound, "all"
    try:
        with torch.no_grad(), _Reads() as reads:
            model(batch)
    finally:
        for m, bound in bounds.items():
            m.query_bound = bound
    return reads.count


def test_training_step_with_lengths_has_the_same_gradients(monkeypatch):
    torch.manual_seed(0)
    model = debug_model().train()
    batch = _batch()

    def grads():
        net = copy.deepcopy(model)  # the debug BNs train: a forward moves their running statistics
        torch.manual_seed(1)  # dropout, grid mask
        preds, _ = net(batch)
        sum(v.float().square().mean() for v in preds.values()).backward()
        return {n: p.grad for n, p in net.named_parameters() if p.grad is not None}

    want = grads()
    monkeypatch.setattr(enc, "read_costs_a_wait", lambda device: True)
    got = grads()
    assert want.keys() == got.keys() and want
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)


def test_static_paths_read_nothing(monkeypatch):
    from bevforge.export.dense_sca import with_dense_sca

    monkeypatch.setattr(enc, "read_costs_a_wait", lambda device: True)
    model = debug_model().eval()
    lidar2img = _batch().lidar2img
    assert model.encoder.project_frames(lidar2img, (64, 96), range(4)) is not None
    assert model.encoder.project_frames(lidar2img, (64, 96), []) is None
    dense = with_dense_sca(model)  # the ONNX export's SCA: every query
    assert dense.encoder.project_frames(lidar2img, (64, 96), range(4)) is None
    for m in model.modules():
        if isinstance(m, SpatialCrossAttention):
            m.query_bound = "all"
    assert model.encoder.project_frames(lidar2img, (64, 96), range(4)) is None
    for m in model.modules():
        if isinstance(m, SpatialCrossAttention):
            m.query_bound, m.fuse_cameras = "auto", "on"  # fused over the cameras: no gather size
    assert model.encoder.project_frames(lidar2img, (64, 96), range(4)) is None
    other = debug_model().eval()
    other.encoder.compile()  # train.compile: an int argument would recompile it per size
    assert other.encoder.project_frames(lidar2img, (64, 96), range(4)) is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_lengths_arrive_without_a_sync_and_change_nothing(monkeypatch):
    torch.manual_seed(0)
    model = debug_model().cuda().eval()
    for m in model.modules():
        if isinstance(m, SpatialCrossAttention):
            m.fuse_cameras = "off"  # the hit gather (fused over the cameras, nothing is read)
    batch = _batch().to("cuda")
    with torch.no_grad():
        model.encoder.project_frames(batch.lidar2img, (64, 96), range(4))  # warm-up: cached constants
        torch.cuda.set_sync_debug_mode("error")  # the copy and the event: no synchronising call
        try:
            projections = model.encoder.project_frames(batch.lidar2img, (64, 96), range(4))
        finally:
            torch.cuda.set_sync_debug_mode("default")
        got, _ = model(batch)
        monkeypatch.setattr(enc, "read_costs_a_wait", lambda device: False)  # each plan reads its own
        sizes = _plans(model, monkeypatch)
        want, _ = model(batch)
    assert [projections.get(t)[2] for t in range(4)] == sizes
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)
