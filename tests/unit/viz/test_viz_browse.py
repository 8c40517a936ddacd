"""viz/browse.py: denormalisation and GT boxes on the transformed images of a Batch."""

from __future__ import annotations

import numpy as np
import torch

from bevforge.config import CAMERAS, Config
from bevforge.structures.batch import Batch
from bevforge.viz.bev import GT_COLOR
from bevforge.viz.browse import batch_camera_images, denormalize, render_batch

MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
H, W, F = 64, 96, 40.0


def _normalise(rgb: tuple[int, int, int], to_rgb: bool, n: int = 6) -> torch.Tensor:
    img = torch.tensor(rgb if to_rgb else rgb[::-1], dtype=torch.float32).view(1, 3, 1, 1).expand(n, 3, H, W)
    return (img - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def test_viz_browse_denormalize_rgb_and_bgr() -> None:
    for to_rgb in (True, False):
        imgs = denormalize(_normalise((10, 200, 90), to_rgb), MEAN, STD, to_rgb, img_hw=(50, 80))
        assert len(imgs) == 6 and imgs[0].size == (80, 50)  # cropped to the valid region
        assert imgs[0].getpixel((3, 3)) == (10, 200, 90)


def _batch() -> Batch:
    torch.manual_seed(0)
    lidar2cam = torch.eye(4, dtype=torch.float64)
    lidar2cam[:3, :3] = torch.tensor([[0, -1, 0], [0, 0, -1], [1, 0, 0]], dtype=torch.float64)
    k = torch.eye(4, dtype=torch.float64)
    k[:3, :3] = torch.tensor([[F, 0, W / 2], [0, F, H / 2], [0, 0, 1]], dtype=torch.float64)
    l2i = (k @ lidar2cam).float().expand(1, 2, 6, 4, 4).clone()  # [B, T, N, 4, 4]; every camera looks forward
    images = _normalise((50, 50, 50), True).expand(1, 2, 6, 3, H, W).clone()  # [B, T, N, 3, H, W]
    return Batch(
        images=images, lidar2img=l2i, can_bus=torch.zeros(1, 2, 18),
        ego2global=torch.eye(4, dtype=torch.float64).expand(1, 2, 4, 4),
        lidar2ego=torch.eye(4, dtype=torch.float64).expand(1, 2, 4, 4),
        frame_valid=torch.ones(1, 2, dtype=torch.bool), scene_tokens=[["s", "s"]], sample_tokens=["tok"],
        timestamps=torch.zeros(1, 2, dtype=torch.int64), img_hw=(H, W),
        gt_boxes=[torch.tensor([[10.0, 0.0, 0.0, 2.0, 2.0, 2.0, 0.0, 0.0, 0.0]])],
        gt_labels=[torch.tensor([0])],
    )  # fmt: skip


def test_viz_browse_gt_box_at_projected_corner() -> None:
    batch = _batch()
    images = batch_camera_images(batch, 0, CAMERAS, MEAN, STD, True)
    img = images["CAM_FRONT"]
    # corner front-left-bottom (11, 1, -1): cam (-1, 1, 11)
    u, v = W / 2 - F / 11, H / 2 + F / 11
    assert img.getpixel((int(round(u)), int(round(v)))) == GT_COLOR
    assert img.getpixel((2, 2)) == (50, 50, 50)


def test_viz_browse_render_batch() -> None:
    cfg = Config()
    out = render_batch(_batch(), cfg, tile_w=96)
    assert [t for t, _ in out] == ["tok"]
    arr = np.asarray(out[0][1])
    assert (arr == np.array(GT_COLOR)).all(-1).any()
