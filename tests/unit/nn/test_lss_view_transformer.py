"""LSS view transformer: frustum geometry against the calibration, cell indexing, splat, shapes."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from bevforge.nn.lss import (
    LSSViewTransformer,
    bev_cell_index,
    depth_bin_centres,
    frustum_points,
    frustum_to_lidar,
)

sys.path.insert(0, str(Path(__file__).parents[1] / "models"))
from models_test_rig import ring_lidar2img  # noqa: E402

# 101 x 101 cells of 1 m over +-50.5 m: x = 0 and integer y are cell centres, never boundaries
PC_RANGE = (-50.5, -50.5, -5.0, 50.5, 50.5, 3.0)


def image_aug(scale: float, rot_deg: float, flip_w: float | None, crop: tuple[float, float]) -> torch.Tensor:
    """``[4, 4]`` pixel transform (resize, crop, rotate about the origin, horizontal flip) as the data
    pipeline folds it into lidar2img: ``aug @ lidar2img``."""
    a = torch.eye(4)
    a[0, 0] = a[1, 1] = scale
    a[0, 3], a[1, 3] = -crop[0], -crop[1]
    r = torch.eye(4)
    c, s = math.cos(math.radians(rot_deg)), math.sin(math.radians(rot_deg))
    r[:2, :2] = torch.tensor([[c, -s], [s, c]])
    a = r @ a
    if flip_w is not None:
        f = torch.eye(4)
        f[0, 0], f[0, 3] = -1.0, flip_w
        a = f @ a
    return a


def test_depth_bins_official() -> None:
    d = depth_bin_centres((1.0, 60.0, 1.0))
    assert d.shape == (59,) and d[0] == 1.0 and d[-1] == 59.0
    with pytest.raises(ValueError, match="depth_bins"):
        depth_bin_centres((5.0, 1.0, 1.0))


def test_frustum_points_reproject_to_their_pixel_and_depth() -> None:
    """Every frustum point, sent to the lidar frame and back through lidar2img (with an image
    augmentation folded in), lands on its own pixel (u, v) at its own depth d."""
    torch.manual_seed(0)
    rig = ring_lidar2img(6, h=64, w=96)  # [N, 4, 4]
    augs = torch.stack(
        [
            image_aug(1.0, 0.0, None, (0.0, 0.0)),
            image_aug(0.9, 5.4, 96.0, (3.0, 10.0)),
            image_aug(1.1, -4.0, None, (-2.0, 7.0)),
            image_aug(0.95, 2.0, 96.0, (0.0, 0.0)),
            image_aug(1.05, -5.4, 96.0, (1.0, -1.0)),
            image_aug(1.0, 1.0, None, (0.0, 4.0)),
        ]
    )  # [N, 4, 4]
    lidar2img = torch.stack([rig, augs @ rig])  # [B=2, N, 4, 4]
    frustum = frustum_points((4, 6), 16, depth_bin_centres((1.0, 60.0, 1.0)))  # [D, 4, 6, 3]
    assert frustum.shape == (59, 4, 6, 3)
    assert frustum[0, 0, 0, :2].tolist() == [8.0, 8.0] and frustum[0, 3, 5, :2].tolist() == [88.0, 56.0]
    points = frustum_to_lidar(frustum, lidar2img)  # [B, N, D, fH, fW, 3]
    assert points.shape == (2, 6, 59, 4, 6, 3)
    homog = torch.cat([points, torch.ones_like(points[..., :1])], dim=-1).double()  # [B, N, D, fH, fW, 4]
    img = torch.einsum("bnij,bndhwj->bndhwi", lidar2img.double(), homog)  # [B, N, D, fH, fW, 4]
    depth = img[..., 2]
    uv = img[..., :2] / depth[..., None]
    expected = frustum.double().expand(2, 6, -1, -1, -1, -1)
    torch.testing.assert_close(depth, expected[..., 2], atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(uv, expected[..., :2], atol=1e-3, rtol=1e-5)


def test_optical_axis_of_front_camera_lands_in_expected_cell() -> None:
    """Front camera of the ring rig: at (0, 0, 1.5) m looking along lidar +y, principal point at the
    image centre, which is the centre of feature cell (1, 3) for a 48 x 112 image at stride 16."""
    lidar2img = ring_lidar2img(6, h=48, w=112)[None]  # [1, N, 4, 4]
    depth_m = depth_bin_centres((1.0, 60.0, 1.0))  # [D]
    frustum = frustum_points((3, 7), 16, depth_m)  # [D, 3, 7, 3]
    assert frustum[:, 1, 3, :2].unique(dim=0).tolist() == [[56.0, 24.0]]
    points = frustum_to_lidar(frustum, lidar2img)  # [1, N, D, 3, 7, 3]
    axis = points[0, 0, :, 1, 3]  # [D, 3] the front camera's optical axis
    expected = torch.stack([torch.zeros_like(depth_m), depth_m, torch.full_like(depth_m, 1.5)], dim=-1)
    torch.testing.assert_close(axis, expected, atol=1e-4, rtol=0)
    cells = bev_cell_index(points, PC_RANGE, 101, 101)[0, 0, :, 1, 3]  # [D]
    d10 = 9  # depth 10 m: y = 10 -> row floor(60.5) = 60, x = 0 -> col 50
    assert cells[d10].item() == 60 * 101 + 50
    inside = depth_m < 50.5
    assert (cells[inside] == (torch.floor(depth_m[inside] + 50.5).long() * 101 + 50)).all()
    assert (cells[~inside] == -1).all()  # beyond y_max
    # the camera sits at z = 1.5 m: a z range ending at 1 m drops the whole axis
    low = (-50.5, -50.5, -5.0, 50.5, 50.5, 1.0)
    assert (bev_cell_index(points, low, 101, 101)[0, 0, :, 1, 3] == -1).all()


def test_bev_cell_index_edges() -> None:
    pc = (-2.0, -1.0, -1.0, 2.0, 1.0, 1.0)  # 4 m x 2 m over 4 cols x 2 rows (1 m cells)
    pts = torch.tensor(
        [
            [-2.0, -1.0, 0.0],  # low corner: row 0, col 0
            [1.999, 0.999, 0.0],  # just inside the high corner: row 1, col 3
            [2.0, 0.0, 0.0],  # x = x_max: outside
            [0.5, -1.001, 0.0],  # y below y_min: outside (floor, not truncation)
            [0.5, 0.5, 1.0],  # z = z_max: outside
            [0.5, 0.5, -1.0],  # z = z_min: inside, row 1, col 2
        ]
    )
    assert bev_cell_index(pts, pc, 2, 4).tolist() == [0, 7, -1, -1, -1, 6]


def test_view_transformer_shapes_splat_and_grad() -> None:
    """Batch 2, 6 cameras: BEV [B, C, H, W], depth a distribution, the BEV equals the naive scatter of
    depth x context over the cell indices, and gradients reach the depth net."""
    torch.manual_seed(0)
    num_b, num_n, c_in, c_ctx, fh, fw = 2, 6, 8, 5, 4, 6
    vt = LSSViewTransformer(c_in, c_ctx, (1.0, 30.0, 2.0), 16, (-40.0, -40.0, -5.0, 40.0, 40.0, 3.0), 16, 24)
    feats = torch.randn(num_b, num_n, c_in, fh, fw, requires_grad=True)
    lidar2img = ring_lidar2img(num_n, h=fh * 16, w=fw * 16)[None].repeat(num_b, 1, 1, 1)  # [B, N, 4, 4]
    lidar2img[1] = image_aug(0.9, 3.0, fw * 16.0, (2.0, 1.0)) @ lidar2img[1]
    bev, depth = vt(feats, lidar2img)
    num_d = vt.num_depth
    assert (
        num_d == 15 and bev.shape == (num_b, c_ctx, 16, 24) and depth.shape == (num_b, num_n, num_d, fh, fw)
    )
    torch.testing.assert_close(depth.sum(2), torch.ones(num_b, num_n, fh, fw))

    cells = vt.cell_index((fh, fw), lidar2img)  # [B, N, D, fH, fW]
    assert (cells >= 0).any() and (cells == -1).any()
    x = vt.depth_net(feats.flatten(0, 1)).view(num_b, num_n, -1, fh, fw)  # [B, N, D + C, fH, fW]
    context = x[:, :, num_d:]  # [B, N, C, fH, fW]
    weighted = depth[:, :, :, None] * context[:, :, None]  # [B, N, D, C, fH, fW]
    naive = torch.zeros(num_b, c_ctx, 16 * 24)
    for b in range(num_b):
        keep = cells[b] >= 0  # [N, D, fH, fW]
        vals = weighted[b].permute(0, 1, 3, 4, 2)[keep]  # [P, C]
        naive[b].index_add_(1, cells[b][keep], vals.T)
    torch.testing.assert_close(bev, naive.view(num_b, c_ctx, 16, 24), atol=1e-5, rtol=1e-4)

    bev.square().sum().backward()
    assert vt.depth_net.weight.grad is not None and vt.depth_net.weight.grad.abs().sum() > 0
    assert feats.grad is not None and torch.isfinite(feats.grad).all()
