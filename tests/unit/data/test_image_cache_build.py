"""``build_image_cache`` (``bevforge cache``): threads write the same bytes as one; what cannot work (a
second camera size, a disk too small) fails before any image is decoded; a failed read leaves no file."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from bevforge.config import CAMERAS
from bevforge.data.image_io import MissingImageError
from bevforge.data.nuscenes import image_cache
from bevforge.data.nuscenes.image_cache import ImageCacheError, build_image_cache
from bevforge.data.nuscenes.infos import load_infos


@pytest.fixture(scope="module")
def data_root(synthetic_data):
    return synthetic_data("cache", num_scenes=2, samples_per_scene=5, seed=3, image_wh=(160, 90))


@pytest.fixture(scope="module")
def samples(data_root):
    return load_infos(data_root / "infos" / "infos_train.json").samples


def _build(samples, data_root, out, **kw):
    return build_image_cache(samples, data_root, CAMERAS, 0.5, out, "train", log=lambda _: None, **kw)


def test_threads_write_the_bytes_one_thread_writes(samples, data_root, tmp_path):
    one = _build(samples, data_root, tmp_path / "one")
    four = _build(samples, data_root, tmp_path / "four", threads=4)
    assert one.read_bytes() == four.read_bytes()
    cache = image_cache.ImageCache(tmp_path / "four", "train", CAMERAS, 0.5)
    assert cache.shape == (len(samples), len(CAMERAS), 45, 80, 3)
    assert np.array(cache[samples[-1]["token"]]).any()


def _no_decoding(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("decoded an image before the checks")

    monkeypatch.setattr(image_cache, "read_image", refuse)


def test_a_second_camera_size_fails_before_decoding(samples, data_root, tmp_path, monkeypatch):
    _no_decoding(monkeypatch)
    odd = copy.deepcopy(samples)
    odd[-1]["cams"]["CAM_BACK"]["width"] = 320
    with pytest.raises(ImageCacheError, match=r"320x90 differs from the first image \(160x90\)"):
        _build(odd, data_root, tmp_path)
    assert not list(tmp_path.iterdir())


def test_a_disk_too_small_fails_before_decoding(samples, data_root, tmp_path, monkeypatch):
    _no_decoding(monkeypatch)
    usage = image_cache.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(image_cache.shutil, "disk_usage", lambda path: usage._replace(free=1000))
    need = len(samples) * len(CAMERAS) * 45 * 80 * 3
    with pytest.raises(ImageCacheError, match=rf"needs 0.0 GiB .*{len(samples)} samples x 6 cameras x 80x45"):
        _build(samples, data_root, tmp_path, threads=2)
    assert need > 1000 and not list(tmp_path.iterdir())


def test_a_failed_read_removes_the_partial_file(samples, data_root, tmp_path):
    broken = copy.deepcopy(samples)
    broken[3]["cams"]["CAM_FRONT"]["path"] = "samples/CAM_FRONT/missing.jpg"
    with pytest.raises(MissingImageError, match="missing.jpg"):
        _build(broken, data_root, tmp_path, threads=2)
    assert not list(tmp_path.iterdir()), "neither the data file nor its temporary"
