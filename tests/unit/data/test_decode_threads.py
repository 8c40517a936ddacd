"""data.decode_threads (data/nuscenes/decode_pool.py): an item's images decoded in threads give the same
item (images, photometric draws, calibration) as one after the other, with and without the image
augmentation, through a worker process too; errors and missing files surface as before."""

from __future__ import annotations

import pickle
import shutil
import threading
import warnings

import pytest
import torch
from test_loader_batches import _cfg

from bevforge.data.image_io import MissingImageError
from bevforge.data.loader import build_dataloader
from bevforge.data.nuscenes import dataset as dataset_module
from bevforge.data.nuscenes.dataset import NuScenesDataset
from bevforge.data.nuscenes.decode_pool import DecodePool
from bevforge.data.nuscenes.infos import load_infos


@pytest.fixture(scope="module")
def data_root(synthetic_data):
    return synthetic_data("syn", num_scenes=3, samples_per_scene=4, seed=0, image_wh=(160, 90))


def _items(ds: NuScenesDataset, indices) -> list[dict]:
    out = []
    for i in indices:
        torch.manual_seed(i)  # the item's random draws (queue, photometric, augmentation)
        out.append(ds[i])
    return out


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
        else:
            assert a[key] == b[key], key


@pytest.mark.parametrize(
    "options",
    [dict(), dict(images_on_device=True), dict(img_aug=True, input_size=(64, 112))],
    ids=["finished-on-cpu", "images-on-device", "image-aug"],
)
def test_threads_give_the_same_items(data_root, options, monkeypatch):
    plain = NuScenesDataset.from_config(_cfg(data_root, **options), "train", train=True)
    threaded = NuScenesDataset.from_config(_cfg(data_root, decode_threads=3, **options), "train", train=True)
    reader_threads = set()
    real = dataset_module.read_image
    monkeypatch.setattr(
        dataset_module, "read_image", lambda *a: reader_threads.add(threading.get_ident()) or real(*a)
    )
    want = _items(plain, range(len(plain)))
    assert reader_threads == {threading.get_ident()}, "without threads the item's own thread reads"
    reader_threads.clear()
    got = _items(threaded, range(len(threaded)))
    assert reader_threads and threading.get_ident() not in reader_threads, "the decode threads read"
    for a, b in zip(got, want, strict=True):
        _assert_same(a, b)


def test_threads_in_a_loader_worker(data_root):
    def batches(threads: int) -> list:
        torch.manual_seed(0)  # the worker's seed comes from the main process's generator
        cfg = _cfg(data_root, decode_threads=threads, num_workers=1)
        return list(build_dataloader(cfg, "train", train=True, batch_size=2, shuffle=False))

    want, got = batches(0), batches(2)
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a.images, b.images, rtol=0, atol=0)
        torch.testing.assert_close(a.lidar2img, b.lidar2img, rtol=0, atol=0)


def test_errors_surface_from_the_threads(data_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(data_root, root)
    cfg = _cfg(root, photometric_aug=False, decode_threads=2)
    ds = NuScenesDataset.from_config(cfg, "train", train=True)
    path = root / load_infos(root / "infos" / "infos_train.json").samples[0]["cams"]["CAM_BACK"]["path"]
    path.write_bytes(b"\xff\xd8\xff not a jpeg")
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        ds[0]
    assert ds.num_corrupt_images == 1  # training: a black image, counted
    path.unlink()
    with pytest.raises(MissingImageError, match="not found"):
        ds[0]


def test_the_pool_is_made_where_it_is_used():
    pool = DecodePool(2)
    assert not DecodePool(1).active and pool.active
    assert pool.submit_all(lambda x: x * 2, {"a": (3,)})["a"].result() == 6
    clone = pickle.loads(pickle.dumps(pool))  # a spawned worker gets the setting, not the threads
    assert clone.threads == 2 and clone._pool is None
    with pytest.raises(ValueError, match="decode_threads must be >= 0"):
        DecodePool(-1)
