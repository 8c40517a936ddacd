"""Augmentation hooks of the dataset on a tiny synthetic set: image content, calibration, boxes and seg
targets agree with the un-augmented item; defaults change nothing; evaluation is deterministic."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bevforge.config import Config, ConfigError
from bevforge.data.augment_bev import BDA, bda_boxes, bda_seg
from bevforge.data.loader import build_dataloader
from bevforge.data.nuscenes.dataset import NuScenesDataset
from bevforge.data.transforms import select_gt

CAMS = ("CAM_FRONT", "CAM_BACK_LEFT")


@pytest.fixture(scope="module")
def data_root(synthetic_data):
    return synthetic_data("syn_aug", num_scenes=2, samples_per_scene=3, seed=1, image_wh=(160, 90))


def _cfg(root, **data) -> Config:
    cfg = Config()
    cfg.data.data_root = str(root)
    cfg.data.info_dir = str(root / "infos")
    cfg.data.num_workers = 0
    cfg.data.cameras = CAMS
    cfg.data.queue_length = 1
    cfg.data.photometric_aug = False
    cfg.model.bev_h = cfg.model.bev_w = 10
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return cfg


def _image_error(aug: dict, ref: dict, bda: np.ndarray, shift_uv: tuple[float, float] = (0.0, 0.0)) -> float:
    """Mean |aug image - ref image| over interior pixels of the augmented image, each pixel's ray traced
    through ``inv(aug lidar2img)``, ``inv(bda)`` and the reference lidar2img (bilinear in the reference)."""
    fh, fw = aug["img_hw"]
    rh, rw = ref["img_hw"]
    ph, pw = ref["images"].shape[-2:]  # padded size: grid_sample normalises by it
    v, u = np.meshgrid(np.arange(4, fh - 4) + 0.5, np.arange(4, fw - 4) + 0.5, indexing="ij")
    depth = 10.0
    q = np.stack([u * depth, v * depth, np.full_like(u, depth), np.ones_like(u)], -1).reshape(-1, 4)  # [P, 4]
    errors = []
    for j in range(len(CAMS)):
        a2i = aug["lidar2img"][0, j].double().numpy()
        r2i = ref["lidar2img"][0, j].double().numpy()
        o = q @ (r2i @ np.linalg.inv(bda) @ np.linalg.inv(a2i)).T  # [P, 4] reference (u d, v d, d, 1)
        uo, vo = o[:, 0] / o[:, 2] + shift_uv[0], o[:, 1] / o[:, 2] + shift_uv[1]
        ok = (uo >= 1) & (uo < rw - 1) & (vo >= 1) & (vo < rh - 1)
        grid = torch.tensor(np.stack([2 * uo[ok] / pw - 1, 2 * vo[ok] / ph - 1], -1), dtype=torch.float32)
        r = F.grid_sample(ref["images"][0, j][None], grid[None, None], align_corners=False)[
            0, :, 0
        ]  # [3, P']
        a = aug["images"][0, j][:, v.reshape(-1)[ok].astype(int), u.reshape(-1)[ok].astype(int)]  # [3, P']
        errors.append((a - r).abs().mean().item())
    return float(np.mean(errors))


def test_augmented_item_agrees_with_the_plain_one(data_root):
    torch.manual_seed(0)
    known = BDA(rot_rad=math.radians(30.0), scale=1.1, flip_x=True, flip_y=True)
    cfg = _cfg(
        data_root,
        input_size=(40, 72),
        img_aug=True,
        rot_lim_deg=(-10.0, 10.0),
        bev_aug=True,
        bda_rot_lim_deg=(30.0, 30.0),
        bda_scale_lim=(1.1, 1.1),
        bda_flip_ratio=1.0,
        with_seg=True,
    )
    aug_ds = NuScenesDataset.from_config(cfg, "train", train=True)
    ref_cfg = _cfg(data_root, with_seg=True, img_scale=1.0)  # raw-size reference: no antialiasing blur
    ref_ds = NuScenesDataset.from_config(ref_cfg, "train", train=False)
    assert aug_ds.img_hw == (40, 72) and ref_ds.img_hw == (90, 160)
    tokens = [ref_ds.sample_token(i) for i in range(len(ref_ds))]
    bda = known.matrix()
    for index in (0, 2):
        aug = aug_ds[index]
        ref = ref_ds[tokens.index(aug["sample_token"])]
        assert aug["images"].shape == (1, len(CAMS), 3, 64, 96)  # 40x72 padded to 32
        err = _image_error(aug, ref, bda)
        assert err < 0.05, err  # normalised units (std ~ 58 grey levels): resampling differences only
        for shift in ((0.5, 0.0), (-0.5, 0.0), (0.0, 0.5), (0.0, -0.5)):  # the true mapping is the best one
            assert _image_error(aug, ref, bda, shift) > err + 0.01, shift
        i = tokens.index(aug["sample_token"])
        boxes, labels = select_gt(
            bda_boxes(aug_ds.table.gt(i)[0], known), *aug_ds.table.gt(i)[1:], aug_ds.pcr
        )
        assert (
            len(boxes) > 0
            and torch.allclose(aug["gt_boxes"], boxes)
            and torch.equal(aug["gt_labels"], labels)
        )
        expect_l2e = ref["lidar2ego"].numpy() @ np.linalg.inv(bda)
        assert np.allclose(aug["lidar2ego"].numpy(), expect_l2e)
        assert torch.equal(aug["seg_target"], bda_seg(ref["seg_target"], known, aug_ds.pcr))


def test_flags_off_leave_items_unchanged(data_root):
    plain = NuScenesDataset.from_config(_cfg(data_root, queue_length=3, photometric_aug=True), "train", True)
    assert plain.image_aug is None and plain.bda is None
    odd_ranges = _cfg(
        data_root,
        queue_length=3,
        photometric_aug=True,
        resize_lim=(0.0, 0.3),
        rot_lim_deg=(-30.0, 30.0),
        bda_rot_lim_deg=(-90.0, 90.0),
        bda_flip_ratio=1.0,
    )
    other = NuScenesDataset.from_config(odd_ranges, "train", True)
    for index in range(len(plain)):
        torch.manual_seed(index)
        a = plain[index]
        torch.manual_seed(index)
        b = other[index]
        for k, v in a.items():
            assert torch.equal(v, b[k]) if isinstance(v, torch.Tensor) else v == b[k], k


def test_evaluation_is_deterministic_and_training_varies(data_root):
    cfg = _cfg(data_root, input_size=(40, 72), img_aug=True, bev_aug=True)
    ev = NuScenesDataset.from_config(cfg, "train", train=False)
    assert ev.bda is None and not ev.image_aug.random
    torch.manual_seed(0)
    first = ev[1]
    torch.manual_seed(1)
    second = ev[1]
    assert torch.equal(first["images"], second["images"]) and torch.equal(
        first["lidar2img"], second["lidar2img"]
    )
    tr = NuScenesDataset.from_config(cfg, "train", train=True)
    seen = set()
    for seed in range(3):
        torch.manual_seed(seed)
        seen.add(tuple(tr[1]["lidar2img"].flatten().tolist()))
    assert len(seen) == 3


def test_loader_batches_have_the_input_size(data_root):
    torch.manual_seed(0)
    cfg = _cfg(data_root, input_size=(40, 72), img_aug=True, bev_aug=True, queue_length=2)
    cfg.model.arch = "bevdet"  # temporal BDA: BEVDet4D-style alignment through lidar2ego
    batch = next(iter(build_dataloader(cfg, "train", train=True, batch_size=2)))
    assert batch.images.shape == (2, 2, len(CAMS), 3, 64, 96) and batch.img_hw == (40, 72)
    assert batch.images[:, :, :, :, 40:].abs().sum() == 0 and batch.images[..., 72:].abs().sum() == 0
    assert batch.lidar2img.dtype == torch.float32 and batch.lidar2ego.dtype == torch.float64


def test_image_cache_and_bgr_in_the_augmented_path(data_root, tmp_path):
    from bevforge.cli.main import main as cli_main

    over = [f"data.data_root={data_root}", f"data.info_dir={data_root / 'infos'}", "data.num_workers=0"]
    over.append("data.cameras=" + ",".join(CAMS))
    cache = tmp_path / "cache"
    assert cli_main(["cache", "bevformer_debug", "--set", *over, "--out", str(cache), "--splits", "val"]) == 0
    ident = {"img_mean": (0.0, 0.0, 0.0), "img_std": (1.0, 1.0, 1.0), "input_size": (40, 72)}
    plain = NuScenesDataset.from_config(_cfg(data_root, **ident), "val", train=False)[1]
    # test branch: scale 72 / 160 = 0.45 -> decoded at 1/2 = the 80x45 of the img_scale 0.5 cache
    cached = NuScenesDataset.from_config(_cfg(data_root, **ident, image_cache=str(cache)), "val", False)[1]
    assert torch.equal(plain["images"], cached["images"]) and torch.equal(
        plain["lidar2img"], cached["lidar2img"]
    )
    bgr = NuScenesDataset.from_config(_cfg(data_root, **ident, to_rgb=False), "val", train=False)[1]
    assert torch.equal(plain["images"].flip(2), bgr["images"]) and plain["images"].max() > 100


def test_bev_aug_with_temporal_bevformer_is_refused(data_root):
    cfg = _cfg(data_root, bev_aug=True, queue_length=3)
    with pytest.raises(ConfigError, match="data.bev_aug.*queue_length"):
        NuScenesDataset.from_config(cfg, "train", train=True)
    assert NuScenesDataset.from_config(cfg, "train", train=False).bda is None  # evaluation never augments
    cfg.model.arch = "bevdet"  # alignment through lidar2ego/ego2global sees inv(bda): allowed
    assert NuScenesDataset.from_config(cfg, "train", train=True).bda is not None
