"""data.images_on_device: uint8 batches finished on the device equal the CPU pipeline's float images."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from bevforge.config import Config
from bevforge.data import transforms
from bevforge.data.device_images import finish_images
from bevforge.data.loader import collate
from bevforge.data.nuscenes import dataset as dataset_module
from bevforge.data.nuscenes.dataset import NuScenesDataset
from bevforge.data.transforms import apply_photometric, draw_photometric, photometric_distortion
from bevforge.structures.batch import require_finished_images


def test_batched_photometric_equals_the_single_image_path():
    """Every step on and off across 24 images: the batched twin gives the single-image torch path's values."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(24, 3, 9, 13, generator=g) * 300 - 20  # out-of-range values exercise the clamps
    images[:, :, 0, 0] = 128.0  # a grey pixel: S = 0, undefined hue
    expect = torch.stack([photometric_distortion(im, np.random.default_rng(s), use_cv2=False)
                          for s, im in enumerate(images)])  # fmt: skip
    params = torch.from_numpy(np.stack([draw_photometric(np.random.default_rng(s)) for s in range(24)]))
    fired = (params != torch.tensor(transforms.PHOTOMETRIC_IDENTITY)).sum(0)
    assert (fired > 0).all() and (fired < 24).all(), fired  # each step both on and off somewhere
    torch.testing.assert_close(apply_photometric(images, params), expect, atol=1e-4, rtol=0)


def test_draws_are_the_distortions_draws():
    """draw_photometric consumes the generator exactly as photometric_distortion does."""
    for seed in range(20):
        a, b = np.random.default_rng(seed), np.random.default_rng(seed)
        draw_photometric(a)
        photometric_distortion(torch.zeros(3, 2, 2), b, use_cv2=False)
        assert a.integers(1 << 30) == b.integers(1 << 30)


@pytest.fixture(scope="module")
def data_root(synthetic_data):
    return synthetic_data("devimg", num_scenes=2, samples_per_scene=4, seed=1, image_wh=(96, 54))


def _cfg(root, **data) -> Config:
    cfg = Config()
    cfg.data.data_root, cfg.data.info_dir = str(root), str(root / "infos")
    cfg.data.queue_length, cfg.data.img_scale = 3, 1.0
    cfg.model.bev_h = cfg.model.bev_w = 10
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return cfg


def _item(cfg: Config, index: int, seed: int) -> dict:
    torch.manual_seed(seed)  # the item's numpy generator is seeded from torch's
    return NuScenesDataset.from_config(cfg, "train", train=True)[index]


@pytest.mark.parametrize("bgr", [False, True])
def test_finished_uint8_batch_equals_the_cpu_pipeline(data_root, monkeypatch, bgr):
    """Item 0 (a queue with padding frames before the data start) and item 3, photometric on, RGB and the
    BGR mean-only normalisation: the same images as the float path (its HSV steps on the torch twins)."""
    norm = {"to_rgb": False, "img_mean": (103.53, 116.28, 123.675), "img_std": (1.0, 1.0, 1.0)} if bgr else {}
    torch_twins = functools.partial(photometric_distortion, use_cv2=False)
    monkeypatch.setattr(dataset_module, "photometric_distortion", torch_twins)
    for index in (0, 3):
        cpu_cfg, dev_cfg = _cfg(data_root, **norm), _cfg(data_root, images_on_device=True, **norm)
        cpu = collate([_item(cpu_cfg, index, seed=index)])
        raw = collate([_item(dev_cfg, index, seed=index)])
        assert raw.images.dtype == torch.uint8 and raw.photometric is not None
        assert raw.photometric.shape == (1, 3, 6, 6)
        if index == 0:
            assert not bool(raw.frame_valid.all())  # padding frames are covered
        done = finish_images(raw, dev_cfg.data)
        assert done.images.dtype == torch.float32 and done.photometric is None
        # the CPU path rounds nothing: uint8 decode -> float; the device path starts from the same uint8
        torch.testing.assert_close(done.images, cpu.images, atol=1e-4, rtol=0)
        torch.testing.assert_close(done.lidar2img, cpu.lidar2img)


def test_float_batches_pass_and_uint8_is_refused_by_the_model(data_root):
    cfg = _cfg(data_root)
    batch = collate([_item(cfg, 2, seed=0)])
    assert finish_images(batch, cfg.data) is batch
    with pytest.raises(TypeError, match="finish_images"):
        require_finished_images(torch.zeros(1, 6, 3, 4, 4, dtype=torch.uint8))


def test_eval_loader_keeps_float_images(data_root):
    ds = NuScenesDataset.from_config(_cfg(data_root, images_on_device=True), "val", train=False)
    item = ds[0]
    assert item["images"].dtype == torch.float32 and item["photometric"] is None


def test_warped_images_on_device_match_up_to_uint8_rounding(data_root, monkeypatch):
    """BEVDet's image augmentation (resize/crop/flip/rotate warp): the uint8 path rounds the warp, so the
    finished images differ from the float path by at most half a grey level (through a contrast of at most
    1.5 twice and the HSV steps, whose hue is steep near grey: 0.05 after normalisation by std ~57)."""
    torch_twins = functools.partial(photometric_distortion, use_cv2=False)
    monkeypatch.setattr(dataset_module, "photometric_distortion", torch_twins)
    aug = {"input_size": (40, 72), "img_aug": True, "queue_length": 1}
    for photometric, atol in ((False, 0.5 / 57.12 + 1e-5), (True, 0.05)):
        cpu_cfg = _cfg(data_root, photometric_aug=photometric, **aug)
        dev_cfg = _cfg(data_root, photometric_aug=photometric, images_on_device=True, **aug)
        cpu = collate([_item(cpu_cfg, 1, seed=7)])
        done = finish_images(collate([_item(dev_cfg, 1, seed=7)]), dev_cfg.data)
        assert done.images.shape == cpu.images.shape == (1, 1, 6, 3, 64, 96)
        torch.testing.assert_close(done.images, cpu.images, atol=atol, rtol=0)
        torch.testing.assert_close(done.lidar2img, cpu.lidar2img)
