"""Lidar depth targets for BEVDet depth supervision: projection into feature cells (same pixel convention
as the LSS frustum), nearest depth per cell, bins; the dataset carries them only when asked, unchanged
by the BEV augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bevforge.config import Config, ConfigError
from bevforge.data.depth_targets import LidarFileError, depth_bin_targets, depth_map, load_lidar_points
from bevforge.data.loader import build_dataloader
from bevforge.data.nuscenes.dataset import NuScenesDataset
from bevforge.nn.lss import frustum_points, frustum_to_lidar

CAMS = ("CAM_FRONT", "CAM_BACK")


def _lidar2img(focal: float = 50.0, cu: float = 32.0, cv: float = 16.0) -> torch.Tensor:
    """A camera at the lidar origin looking along lidar +x (image u = -y, v = -z), ``[1, 4, 4]``."""
    cam_from_lidar = torch.tensor(
        [[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
    )
    k = torch.eye(4)
    k[0, 0], k[1, 1], k[0, 2], k[1, 2] = focal, focal, cu, cv
    return (k @ cam_from_lidar)[None]


def test_depth_map_cell_min_depth_and_rejections():
    l2i = _lidar2img()  # 64 x 32 image, stride 8 -> 8 x 4 cells
    pts = torch.tensor(
        [
            [10.0, 0.0, 0.0],  # pixel (32, 16) -> cell row 2, col 4, depth 10
            [6.0, 0.0, 0.0],  # same pixel, nearer: the cell keeps 6
            [-5.0, 0.0, 0.0],  # behind the camera
            [5.0, 10.0, 0.0],  # u = 32 - 100 < 0: outside the image
            [4.0, 0.4, 0.4],  # u = 27, v = 11 -> cell row 1, col 3
        ]
    )
    d = depth_map(pts, l2i, img_hw=(32, 64), feat_hw=(4, 8), stride=8)
    assert d.shape == (1, 4, 8)
    assert d[0, 2, 4] == pytest.approx(6.0)
    assert d[0, 1, 3] == pytest.approx(4.0)
    assert int((d > 0).sum()) == 2


def test_depth_map_respects_valid_image_not_padding():
    l2i = _lidar2img()
    pts = torch.tensor([[10.0, -0.9, 0.0]])  # u = 32 + 4.5 = 36.5, inside a 64 px image ...
    assert (depth_map(pts, l2i, (32, 64), (4, 8), 8) > 0).sum() == 1
    # ... but outside a 36 px wide valid region (the rest is padding)
    assert (depth_map(pts, l2i, (32, 36), (4, 8), 8) > 0).sum() == 0


def test_lss_frustum_point_lands_in_its_own_cell():
    """An LSS frustum point (cell centre at a bin depth) projects back into its own cell with that depth."""
    torch.manual_seed(0)
    l2i = _lidar2img(focal=40.0, cu=30.0, cv=14.0)
    l2i[0, :3, 3] += torch.tensor([3.0, -2.0, 1.5])  # some translation
    depths = torch.tensor([2.0, 7.0, 13.0])
    pts = frustum_to_lidar(frustum_points((4, 8), 8, depths), l2i[None])[0, 0]  # [D, fH, fW, 3]
    for k in range(3):
        d = depth_map(pts[k].reshape(-1, 3), l2i, (32, 64), (4, 8), 8)  # [1, 4, 8]
        assert torch.allclose(d[0], torch.full((4, 8), float(depths[k])), atol=1e-4)


def test_depth_bin_targets_nearest_bin():
    bins = torch.arange(1.0, 6.0)  # 1..5 m
    idx, valid = depth_bin_targets(torch.tensor([0.0, 1.2, 1.6, 5.4, 5.6, 0.4, 0.6]), bins)
    assert valid.tolist() == [False, True, True, True, False, False, True]
    assert idx[valid].tolist() == [0, 1, 4, 0]


def test_load_lidar_points_errors(tmp_path):
    with pytest.raises(LidarFileError, match="not found"):
        load_lidar_points(tmp_path / "missing.pcd.bin")
    bad = tmp_path / "bad.pcd.bin"
    np.arange(7, dtype=np.float32).tofile(bad)
    with pytest.raises(LidarFileError, match="multiple of 5"):
        load_lidar_points(bad)
    good = tmp_path / "good.pcd.bin"
    np.arange(10, dtype=np.float32).tofile(good)
    assert load_lidar_points(good).tolist() == [[0.0, 1.0, 2.0], [5.0, 6.0, 7.0]]


@pytest.fixture(scope="module")
def data_root(synthetic_data):
    return synthetic_data("syn_depth", num_scenes=2, samples_per_scene=2, seed=3, image_wh=(160, 90))


def _cfg(root, depth_weight: float, bev_aug: bool) -> Config:
    cfg = Config()
    cfg.data.data_root, cfg.data.info_dir = str(root), str(root / "infos")
    cfg.data.num_workers, cfg.data.cameras, cfg.data.queue_length = 0, CAMS, 1
    cfg.data.photometric_aug = False
    cfg.data.img_scale = 1.0
    cfg.data.img_aug, cfg.data.bev_aug = True, bev_aug
    cfg.model.arch = "bevdet"
    cfg.model.bevdet.feat_downsample = 16
    cfg.model.bevdet.depth_loss_weight = depth_weight
    return cfg


def test_dataset_depth_gt_only_when_asked_and_same_under_bda(data_root):
    off = next(iter(build_dataloader(_cfg(data_root, 0.0, True), "train", train=True)))
    assert off.depth_gt is None
    torch.manual_seed(5)
    a = NuScenesDataset.from_config(_cfg(data_root, 3.0, False), "train", train=True)[0]
    torch.manual_seed(5)
    b = NuScenesDataset.from_config(_cfg(data_root, 3.0, True), "train", train=True)[0]
    hp, wp = a["images"].shape[-2:]
    assert a["depth_gt"].shape == (len(CAMS), hp // 16, wp // 16)
    assert (a["depth_gt"] > 0).float().mean() > 0.2  # ground rings + box faces cover many cells
    assert not torch.allclose(a["lidar2img"], b["lidar2img"])  # the BDA changed the calibration ...
    assert torch.equal(a["depth_gt"], b["depth_gt"])  # ... not the camera depths
    ev = NuScenesDataset.from_config(_cfg(data_root, 3.0, False), "val", train=False)[0]
    assert ev["depth_gt"] is None  # evaluation needs no lidar


def test_dataset_depth_stride_must_divide_padding(data_root):
    cfg = _cfg(data_root, 3.0, False)
    cfg.data.pad_divisor = 8
    with pytest.raises(ConfigError, match="pad_divisor"):
        NuScenesDataset.from_config(cfg, "train", train=True)
