"""Loader on a tiny synthetic dataset: batch shapes, temporal queue and scene boundaries, projections."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import torch

from bevforge.config import Config
from bevforge.data.image_io import MissingImageError
from bevforge.data.loader import build_dataloader
from bevforge.data.nuscenes.dataset import NuScenesDataset
from bevforge.data.nuscenes.infos import load_infos
from bevforge.structures.batch import Batch


@pytest.fixture(scope="module")
def data_root(synthetic_data):
    return synthetic_data("syn", num_scenes=3, samples_per_scene=4, seed=0, image_wh=(160, 90))


def _cfg(root, **data) -> Config:
    cfg = Config()
    cfg.data.data_root = str(root)
    cfg.data.info_dir = str(root / "infos")
    cfg.data.num_workers = 0
    cfg.data.queue_length = 3
    cfg.model.bev_h = cfg.model.bev_w = 10
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return cfg


def test_train_batches_shapes_and_queue(data_root):
    torch.manual_seed(0)
    loader = build_dataloader(_cfg(data_root), "train", train=True, batch_size=2, shuffle=False)
    batches = list(loader)
    assert len(batches) == 4  # 8 train samples
    b = batches[0]
    assert isinstance(b, Batch)
    # 160x90 * 0.5 = 80x45, padded to 96x64
    assert b.images.shape == (2, 3, 6, 3, 64, 96) and b.images.dtype == torch.float32
    assert b.img_hw == (45, 80)
    assert b.lidar2img.shape == (2, 3, 6, 4, 4) and b.can_bus.shape == (2, 3, 18)
    assert b.ego2global.shape == (2, 3, 4, 4) and b.ego2global.dtype == torch.float64
    assert b.frame_valid.shape == (2, 3) and b.timestamps.shape == (2, 3)
    assert len(b.gt_boxes) == 2 and b.gt_boxes[0].shape[1] == 9 and b.gt_labels[0].dtype == torch.int64
    assert b.images[0, :, :, :, 45:].abs().sum() == 0  # padding rows are zero
    # sample 0: both history frames are before the data start -> padding frames
    assert b.frame_valid[0].tolist() == [False, False, True] and b.scene_tokens[0][:2] == ["", ""]
    assert b.images[0, :2].abs().sum() == 0
    for bb in batches:  # frames are in time order and the current frame is the sample itself
        for i in range(bb.batch_size):
            valid = bb.timestamps[i][bb.frame_valid[i]]
            assert torch.all(valid[1:] > valid[:-1])
    ds = loader.dataset
    samples = load_infos(data_root / "infos" / "infos_train.json").samples
    first_of_scene2 = next(i for i in range(len(ds)) if samples[i]["frame_idx"] == 0 and i > 0)
    item = ds[first_of_scene2]
    cur = samples[first_of_scene2]["scene_token"]
    assert item["scene_tokens"][-1] == cur and item["scene_tokens"][0] != cur  # history from the last scene
    assert item["frame_valid"].all()


def test_queue_drops_one_history_frame():
    rng = np.random.default_rng(0)

    class Q:
        queue_length = 4

    seen = set()
    for _ in range(50):
        q = NuScenesDataset.queue_indices(Q(), 10, rng)
        assert len(q) == 4 and q[-1] == 10 and q[:-1] == sorted(q[:-1]) and set(q[:-1]) < {6, 7, 8, 9}
        seen.add(tuple(q))
    assert len(seen) == 4  # each of the 4 history frames gets dropped sometimes


def test_eval_loader_scene_order_and_projection(data_root):
    torch.manual_seed(0)
    cfg = _cfg(data_root, photometric_aug=False)
    loader = build_dataloader(cfg, "train", train=False, batch_size=1)
    batches = list(loader)
    assert all(b.num_frames == 1 for b in batches)
    ts = [int(b.timestamps[0, 0]) for b in batches]
    assert ts == sorted(ts)
    # lidar2img after the resize projects a GT centre to the same relative place as the raw lidar2img
    samples = load_infos(data_root / "infos" / "infos_train.json").samples
    for k, b in enumerate(batches[:3]):
        s = samples[k]
        assert b.sample_tokens[0] == s["token"]
        centre = torch.tensor([*s["gt"]["boxes"][0][:3], 1.0], dtype=torch.float64)
        cam = s["cams"]["CAM_FRONT"]
        raw = torch.tensor(cam["lidar2img"], dtype=torch.float64) @ centre
        new = b.lidar2img[0, 0, 0].double() @ centre
        h, w = b.img_hw
        rel_raw = (raw[:2] / raw[2]) / torch.tensor([cam["width"], cam["height"]], dtype=torch.float64)
        rel_new = (new[:2] / new[2]) / torch.tensor([w, h], dtype=torch.float64)
        assert torch.allclose(rel_raw, rel_new, atol=1e-5)


def test_eval_lanes_and_seg_targets(data_root):
    cfg = _cfg(data_root, with_seg=True)
    batches = list(build_dataloader(cfg, "train", train=False, batch_size=2))
    assert batches[0].batch_size == 2 and batches[0].seg_target.shape == (2, 3, 10, 10)
    assert batches[0].scene_tokens[0] != batches[0].scene_tokens[1]  # two scenes side by side
    assert batches[0].seg_target[:, 0].sum() > 0  # drivable area around the ego


def test_missing_and_corrupt_images(data_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(data_root, root)
    cfg = _cfg(root, photometric_aug=False)
    ds = NuScenesDataset.from_config(cfg, "train", train=True)
    path = root / load_infos(root / "infos" / "infos_train.json").samples[0]["cams"]["CAM_BACK"]["path"]
    path.write_bytes(b"\xff\xd8\xff not a jpeg")
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds[0]
        ds[0]
    assert ds.num_corrupt_images == 2 and sum(str(path) in str(w.message) for w in caught) == 1
    eval_ds = NuScenesDataset.from_config(cfg, "train", train=False)
    with pytest.raises(OSError, match="CAM_BACK.*corrupt"):
        eval_ds[0]
    path.unlink()
    with pytest.raises(MissingImageError, match="not found"):
        ds[0]


def test_image_cache_cli_gives_same_images(data_root, tmp_path):
    from bevforge.cli.main import main as cli_main

    over = [f"data.data_root={data_root}", f"data.info_dir={data_root / 'infos'}", "data.num_workers=0"]
    cache = tmp_path / "cache"
    assert cli_main(["cache", "bevformer_debug", "--set", *over, "--out", str(cache), "--splits", "val"]) == 0
    assert (cache / "val.u8").is_file() and (cache / "val.json").is_file()
    plain = NuScenesDataset.from_config(_cfg(data_root, photometric_aug=False), "val", train=False)
    cached = NuScenesDataset.from_config(_cfg(data_root, image_cache=str(cache)), "val", train=False)
    assert torch.equal(plain[2]["images"], cached[2]["images"])
    with pytest.raises(ValueError, match="img_scale=0.5.*img_scale=0.25.*bevforge cache"):
        NuScenesDataset.from_config(
            _cfg(data_root, image_cache=str(cache), img_scale=0.25), "val", train=False
        )


def test_bgr_order_and_normalisation(data_root):
    def images(**kw):
        ds = NuScenesDataset.from_config(_cfg(data_root, photometric_aug=False, **kw), "val", train=False)
        return ds[1]["images"]

    ident = {"img_mean": (0.0, 0.0, 0.0), "img_std": (1.0, 1.0, 1.0)}
    rgb, bgr, norm = images(**ident), images(**ident, to_rgb=False), images()
    assert torch.equal(rgb.flip(2), bgr) and rgb.max() <= 255 and rgb.max() > 100
    mean = torch.tensor((123.675, 116.28, 103.53)).view(3, 1, 1)
    std = torch.tensor((58.395, 57.12, 57.375)).view(3, 1, 1)
    assert torch.allclose(norm[..., :45, :80], (rgb[..., :45, :80] - mean) / std, atol=1e-4)


def test_filter_empty_gt_redraws_in_training(data_root):
    torch.manual_seed(0)
    ds = NuScenesDataset.from_config(
        _cfg(data_root, queue_length=1, photometric_aug=False), "train", train=True
    )
    tab = ds.table
    tab.gt_valid[tab.gt_offsets[3] : tab.gt_offsets[4]] = False  # sample 3 has no usable GT
    assert ds[3]["sample_token"] != ds.sample_token(3) and len(ds[3]["gt_boxes"]) > 0
    ds.filter_empty_gt = False
    item = ds[3]
    assert item["sample_token"] == ds.sample_token(3) and item["gt_boxes"].shape == (0, 9)


@pytest.mark.parametrize("on_device", [False, True])
def test_bench_data_smoke(data_root, tmp_path, on_device):
    from bevforge.cli.main import main as cli_main

    over = [f"data.data_root={data_root}", f"data.info_dir={data_root / 'infos'}", "data.num_workers=0",
            f"data.images_on_device={str(on_device).lower()}"]  # fmt: skip
    out = tmp_path / "data.md"
    args = ["bench", "data", "bevformer_debug", "--set", *over, "--batches", "1", "--naive-samples", "1"]
    assert cli_main([*args, "--out", str(out)]) == 0
    text = out.read_text()
    assert "bevforge loader" in text and "naive PIL" in text and "commit:" in text
    assert (f"images_on_device={on_device}" in text) and (("ms/sample (torch path)" in text) == on_device)
