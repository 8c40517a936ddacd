"""Ego-motion alignment: can_bus deltas, reference-point shift and previous-BEV rotation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.functional import rotate

from bevforge.geometry.ego_motion import OFFICIAL_ROTATE_CENTER, bev_shift, can_bus_deltas, rotate_bev
from bevforge.geometry.reference_points import bev_reference_points_2d


def blob(bev_h: int, bev_w: int, row: int, col: int) -> torch.Tensor:
    bev = torch.zeros(1, bev_h * bev_w, 1)
    bev[0, row * bev_w + col, 0] = 1.0
    return bev


def argmax_cell(bev: torch.Tensor, bev_w: int) -> tuple[int, int]:
    idx = int(bev[0, :, 0].argmax())
    return idx // bev_w, idx % bev_w


def test_can_bus_deltas_follow_contract():
    cur = torch.arange(36, dtype=torch.float32).view(2, 18) + 100.0
    prev = torch.full((2, 18), 1.0)
    out = can_bus_deltas(cur, prev, torch.tensor([True, False]))
    torch.testing.assert_close(out[0, 0:3], cur[0, 0:3] - 1.0)
    assert out[0, 17] == cur[0, 17] - 1.0 and out[0, 16] == cur[0, 16]
    assert (out[1, 0:3] == 0).all() and out[1, 17] == 0 and out[1, 16] == cur[1, 16]
    torch.testing.assert_close(out[:, 3:16], cur[:, 3:16])
    with pytest.raises(ValueError, match="18"):
        can_bus_deltas(cur[:, :10], None, torch.tensor([False, False]))


@pytest.mark.parametrize("yaw_rad", [0.0, 0.7])
def test_shift_moves_blob_by_travelled_cells(yaw_rad: float):
    bev_h = bev_w = 16
    grid_m = 102.4 / 16  # 6.4 m cells
    cells = 3
    # ego drives `cells` cells forward along its heading (global frame)
    delta = torch.zeros(1, 18)
    delta[0, 0] = cells * grid_m * math.cos(yaw_rad)
    delta[0, 1] = cells * grid_m * math.sin(yaw_rad)
    delta[0, 16] = yaw_rad
    shift = bev_shift(delta, bev_h, bev_w, (grid_m, grid_m))
    torch.testing.assert_close(shift, torch.tensor([[0.0, cells / bev_h]]), atol=1e-6, rtol=0)
    # a static object 10 rows ahead in the previous BEV is now 10 - cells rows ahead
    prev = blob(bev_h, bev_w, 13, 5)
    ref = bev_reference_points_2d(bev_h, bev_w) + shift  # [Q, 2] normalised (x, y)
    # [1, C, H, W] sampled at [1, H, W, 2]
    image = prev.view(1, bev_h, bev_w, 1).permute(0, 3, 1, 2)
    aligned = F.grid_sample(image, (2 * ref - 1).view(1, bev_h, bev_w, 2), align_corners=False)
    assert argmax_cell(aligned.flatten(2).transpose(1, 2), bev_w) == (13 - cells, 5)


def test_rotation_turns_blob_with_yaw_change():
    bev_h = bev_w = 16
    # object right of the car (lidar +x, y = 0); the car turns left by 90 deg -> object is now behind
    prev = blob(bev_h, bev_w, 8, 13)
    out = rotate_bev(prev, torch.tensor([90.0]), bev_h, bev_w)
    row, col = argmax_cell(out, bev_w)
    assert (row, col) == (2, 8)  # y < 0 (behind), x = 0 (cell 8 of 16 starts at x = 0)


@pytest.mark.parametrize(("size", "center"), [((10, 14), None), ((12, 12), OFFICIAL_ROTATE_CENTER)])
def test_rotation_matches_torchvision_per_sample(size, center):
    torch.manual_seed(0)
    bev_h, bev_w = size
    bev = torch.randn(2, bev_h * bev_w, 3)
    angles = torch.tensor([17.5, -63.0])
    out = rotate_bev(bev, angles, bev_h, bev_w, center)
    for b in range(2):
        img = bev[b].view(bev_h, bev_w, 3).permute(2, 0, 1)
        ref = rotate(img, float(angles[b]), center=list(center) if center else None)
        torch.testing.assert_close(out[b], ref.permute(1, 2, 0).reshape(-1, 3))
