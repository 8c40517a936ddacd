"""Batch.to: tensors go to the device, host-side bookkeeping (frame_valid) stays on the CPU."""

import torch

from bevforge.structures.batch import HOST_FIELDS, Batch
from bevforge.structures.temporal import TemporalState


def _batch(b: int = 2, t: int = 2) -> Batch:
    return Batch(
        images=torch.zeros(b, t, 1, 3, 8, 8),
        lidar2img=torch.eye(4).expand(b, t, 1, 4, 4).clone(),
        can_bus=torch.zeros(b, t, 18),
        ego2global=torch.eye(4, dtype=torch.float64).expand(b, t, 4, 4).clone(),
        lidar2ego=torch.eye(4, dtype=torch.float64).expand(b, t, 4, 4).clone(),
        frame_valid=torch.tensor([[False, True], [True, True]]),
        scene_tokens=[["s0", "s0"], ["s1", "s1"]],
        sample_tokens=["a", "b"],
        timestamps=torch.zeros(b, t, dtype=torch.int64),
        img_hw=(8, 8),
        gt_boxes=[torch.zeros(0, 9)] * b,
        gt_labels=[torch.zeros(0, dtype=torch.int64)] * b,
    )


def test_to_keeps_host_fields_on_cpu() -> None:
    moved = _batch().to("meta")  # a device that is not the CPU, on any machine
    assert HOST_FIELDS == ("frame_valid",)
    assert moved.images.device.type == "meta" and moved.lidar2img.device.type == "meta"
    assert moved.gt_boxes[0].device.type == "meta"
    assert moved.frame_valid.device.type == "cpu"
    assert moved.frame_valid.tolist() == [[False, True], [True, True]]


def test_prev_exists_combines_scene_and_valid_on_the_state_device() -> None:
    state = TemporalState(torch.zeros(2, 4, 3), torch.zeros(2, 18), ["s0", "other"])
    batch = _batch()
    out = state.prev_exists([tokens[1] for tokens in batch.scene_tokens], batch.frame_valid[:, 0])
    assert out.tolist() == [False, False]  # sample 0: frame invalid; sample 1: another scene
    out = state.prev_exists(["s0", "s1"], batch.frame_valid[:, 1])
    assert out.tolist() == [True, False] and out.device == state.prev_bev.device
