"""BEVFormer on CUDA: Triton MSDA dispatch matches the reference, bf16 autocast runs (skipped on CPU)."""

from __future__ import annotations

import time

import pytest
import torch
from models_test_rig import ring_lidar2img

from bevforge.config import load_config
from bevforge.models.build import build_model
from bevforge.structures.batch import Batch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
N = 6


def cuda_batch(num_b: int, num_t: int, h: int, w: int) -> Batch:
    can_bus = torch.zeros(num_b, num_t, 18)
    can_bus[..., 0] = torch.arange(num_t, dtype=torch.float32) * 2.0
    can_bus[..., 17] = torch.arange(num_t, dtype=torch.float32) * 3.0
    eye = torch.eye(4, dtype=torch.float64).expand(num_b, num_t, 4, 4).clone()
    batch = Batch(
        images=torch.randn(num_b, num_t, N, 3, h, w),
        lidar2img=ring_lidar2img(N, h, w).expand(num_b, num_t, -1, -1, -1).clone(),
        can_bus=can_bus,
        ego2global=eye,
        lidar2ego=eye.clone(),
        frame_valid=torch.ones(num_b, num_t, dtype=torch.bool),
        scene_tokens=[["s"] * num_t for _ in range(num_b)],
        sample_tokens=["x"] * num_b,
        timestamps=torch.zeros(num_b, num_t, dtype=torch.int64),
        img_hw=(h, w),
        gt_boxes=[torch.zeros(0, 9)] * num_b,
        gt_labels=[torch.zeros(0, dtype=torch.int64)] * num_b,
    )
    return batch.to("cuda")


def run(model, batch, kernels: str, monkeypatch) -> tuple[torch.Tensor, torch.Tensor]:
    monkeypatch.setenv("BEVFORGE_KERNELS", kernels)
    model.zero_grad(set_to_none=True)
    preds, _ = model(batch)
    (preds["bev"].square().mean() + preds["box_code"].square().mean()).backward()
    return preds["bev"].detach(), model.encoder.layers[0].spatial_attn.output_proj.weight.grad.clone()


def test_debug_model_triton_matches_reference(monkeypatch):
    torch.manual_seed(0)
    model = build_model(load_config("bevformer_debug", ["model.dropout=0.0"])).cuda().train()
    batch = cuda_batch(2, 2, 128, 224)
    bev_ref, grad_ref = run(model, batch, "reference", monkeypatch)
    bev_tri, grad_tri = run(model, batch, "auto", monkeypatch)
    torch.testing.assert_close(bev_tri, bev_ref, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(grad_tri, grad_ref, atol=2e-3, rtol=2e-2)


def test_tiny_full_size_bf16_train_step(monkeypatch):
    """The tiny recipe at its real input size (800 x 450 padded to 800 x 480), queue 3, bf16 autocast."""
    torch.manual_seed(0)
    monkeypatch.setenv("BEVFORGE_KERNELS", "auto")
    model = build_model(load_config("bevformer_tiny", ["model.backbone.pretrained="])).cuda().train()
    batch = cuda_batch(1, 3, 480, 800)
    times = []
    for _ in range(3):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            preds, state = model(batch)
            loss = preds["cls_logits"].float().sigmoid().mean() + preds["box_code"].float().abs().mean()
        loss.backward()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    assert torch.isfinite(preds["bev"]).all() and torch.isfinite(loss)
    grads = [p.grad for p in model.encoder.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    print(
        f"tiny bf16 train step: {[round(t, 3) for t in times]} s, "
        f"max mem {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    )
