"""BEVFormer composition on the debug recipe: contract shapes, history without gradients, per-sample state."""

from __future__ import annotations

import pytest
import torch
from models_test_rig import ring_lidar2img

from bevforge.config import load_config
from bevforge.models.bevformer import BEVFormer
from bevforge.models.build import build_model
from bevforge.structures.batch import Batch
from bevforge.structures.temporal import TemporalState

N, H, W, BEV = 6, 64, 96, 12


def random_batch(scenes: list[list[str]], valid: torch.Tensor | None = None) -> Batch:
    num_b, num_t = len(scenes), len(scenes[0])
    can_bus = torch.zeros(num_b, num_t, 18)
    can_bus[..., 0] = torch.arange(num_t, dtype=torch.float32) * 2.0  # driving along global x
    can_bus[..., 16] = 0.1
    can_bus[..., 17] = torch.arange(num_t, dtype=torch.float32) * 3.0
    eye = torch.eye(4, dtype=torch.float64).expand(num_b, num_t, 4, 4).clone()
    return Batch(
        images=torch.randn(num_b, num_t, N, 3, H, W),
        lidar2img=ring_lidar2img(N).expand(num_b, num_t, -1, -1, -1).clone(),
        can_bus=can_bus,
        ego2global=eye,
        lidar2ego=eye.clone(),
        frame_valid=torch.ones(num_b, num_t, dtype=torch.bool) if valid is None else valid,
        scene_tokens=scenes,
        sample_tokens=[f"s{b}" for b in range(num_b)],
        timestamps=torch.zeros(num_b, num_t, dtype=torch.int64),
        img_hw=(H, W),
        gt_boxes=[torch.zeros(0, 9) for _ in range(num_b)],
        gt_labels=[torch.zeros(0, dtype=torch.int64) for _ in range(num_b)],
    )


def debug_model(with_seg: bool = False) -> BEVFormer:
    cfg = load_config("bevformer_debug", [f"model.bev_h={BEV}", f"model.bev_w={BEV}", "model.num_queries=20"])
    cfg.data.with_seg = cfg.model.with_seg = with_seg
    cfg.model.use_grid_mask = True
    return build_model(cfg)


@pytest.fixture(scope="module")
def model() -> BEVFormer:
    torch.manual_seed(0)
    return debug_model(with_seg=True)


def test_bevformer_forward_backward_contract(model: BEVFormer):
    torch.manual_seed(0)
    model.train()
    batch = random_batch([["a", "a"], ["b", "b"]])
    batch.images.requires_grad_(True)
    calls: list[tuple[bool, bool]] = []
    hook = model.encoder.register_forward_hook(
        lambda mod, args, out: calls.append((mod.training, torch.is_grad_enabled()))
    )
    try:
        preds, state = model(batch)
    finally:
        hook.remove()
    dec, queries, classes = 2, 20, 10
    assert preds["cls_logits"].shape == (dec, 2, queries, classes)
    assert preds["box_code"].shape == (dec, 2, queries, 10)
    assert preds["seg_logits"].shape == (2, 3, BEV, BEV)
    assert preds["bev"].shape == (2, BEV * BEV, 64)
    # history frame: eval mode and no grad; current frame: train mode with grad; mode restored after
    assert calls == [(False, False), (True, True)] and model.training
    loss = preds["cls_logits"].sum() + preds["box_code"].sum() + preds["seg_logits"].sum()
    loss.backward()
    grad = batch.images.grad
    assert grad is not None and grad[:, 1].abs().sum() > 0
    assert grad[:, 0].abs().sum() == 0  # the history frame gets no gradient
    assert model.encoder.bev_embedding.weight.grad is not None
    assert isinstance(state, TemporalState) and not state.prev_bev.requires_grad
    assert state.scene_tokens == ["a", "b"]
    torch.testing.assert_close(state.prev_can_bus, batch.can_bus[:, -1])
    model.zero_grad(set_to_none=True)


def test_bevformer_scene_change_resets_one_sample_only(model: BEVFormer):
    torch.manual_seed(0)
    model.eval()
    with torch.no_grad():
        _, state = model(random_batch([["s0", "s0"], ["s1", "s1"]]))
        nxt = random_batch([["s0"], ["s2"]])  # sample 1 starts a new scene
        preds, new_state = model(nxt, state)
        one = TemporalState(state.prev_bev[:1], state.prev_can_bus[:1], state.scene_tokens[:1])
        alone0, _ = model(slice_batch(nxt, 0), one)
        alone1, _ = model(slice_batch(nxt, 1), None)
        alone0_fresh, _ = model(slice_batch(nxt, 0), None)
    torch.testing.assert_close(preds["bev"][:1], alone0["bev"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(preds["bev"][1:], alone1["bev"], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(alone0["bev"], alone0_fresh["bev"], atol=1e-3)  # the prev BEV mattered
    assert new_state.scene_tokens == ["s0", "s2"]


def test_bevformer_padding_frame_is_not_history(model: BEVFormer):
    torch.manual_seed(0)
    model.eval()
    valid = torch.tensor([[False, True], [True, True]])
    batch = random_batch([["a", "a"], ["b", "b"]], valid)
    with torch.no_grad():
        preds, _ = model(batch)
        fresh, _ = model(slice_batch(batch.frame(-1), 0), None)
    torch.testing.assert_close(preds["bev"][:1], fresh["bev"], atol=1e-4, rtol=1e-4)


def test_bevformer_state_batch_mismatch_is_a_clear_error(model: BEVFormer):
    model.eval()
    state = TemporalState(torch.zeros(3, BEV * BEV, 64), torch.zeros(3, 18), ["a", "b", "c"])
    with torch.no_grad(), pytest.raises(ValueError, match="state=None"):
        model(random_batch([["a"], ["b"]]), state)


def slice_batch(batch: Batch, b: int) -> Batch:
    sl = slice(b, b + 1)
    return Batch(
        images=batch.images[sl],
        lidar2img=batch.lidar2img[sl],
        can_bus=batch.can_bus[sl],
        ego2global=batch.ego2global[sl],
        lidar2ego=batch.lidar2ego[sl],
        frame_valid=batch.frame_valid[sl],
        scene_tokens=batch.scene_tokens[sl],
        sample_tokens=batch.sample_tokens[sl],
        timestamps=batch.timestamps[sl],
        img_hw=batch.img_hw,
        gt_boxes=batch.gt_boxes[sl],
        gt_labels=batch.gt_labels[sl],
    )
