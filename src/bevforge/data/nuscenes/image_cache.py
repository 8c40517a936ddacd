"""Optional pre-resized image cache: uint8 images in one numpy memmap per split + a JSON index.

Layout in ``cache_dir``: ``{split}.u8`` (raw ``[num_samples, N, H, W, 3]`` uint8, RGB, resized by
``img_scale``, not padded) and ``{split}.json`` (format, version, shape, img_scale, cameras, tokens).
Used by the dataset when ``cfg.data.image_cache`` is set; built by ``bevforge cache CONFIG``.
"""

from __future__ import annotations

import functools
import json
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bevforge.data.image_io import read_image, target_size
from bevforge.errors import InputError
from bevforge.io import atomic_write_json

CACHE_FORMAT = "bevforge-image-cache"
CACHE_VERSION = 1


class ImageCacheError(InputError, ValueError):
    """The cache is missing, stale or does not match the config; names the file and the fix."""


def build_image_cache(
    samples: Sequence[dict],
    data_root: str | Path,
    cameras: Sequence[str],
    img_scale: float,
    cache_dir: str | Path,
    split: str,
    log: Callable[[str], None] = print,
    threads: int = 1,
) -> Path:
    """Decode + resize every camera image of ``samples`` into ``{cache_dir}/{split}.u8``, ``threads``
    samples at a time (JPEG decoding and resizing run outside the GIL).

    Checked before anything is decoded: every camera has the first one's size, and the cache fits on its
    disk (a memmap write to a full disk kills the process with SIGBUS, no Python error). The data file
    appears only when complete (written to a temporary name first, removed if a read fails); its index
    last."""
    if not samples:
        raise ImageCacheError(f"split {split!r} has no samples: nothing to cache")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    cam0 = samples[0]["cams"][cameras[0]]
    w, h = target_size(cam0["width"], cam0["height"], img_scale)
    for s in samples:
        for cam in cameras:
            c = s["cams"][cam]
            if target_size(c["width"], c["height"], img_scale) != (w, h):
                raise ImageCacheError(
                    f"{c['path']}: {c['width']}x{c['height']} differs from the first image "
                    f"({cam0['width']}x{cam0['height']}); the cache needs one camera size (train without "
                    "data.image_cache)"
                )
    shape = (len(samples), len(cameras), h, w, 3)
    data_path = cache_dir / f"{split}.u8"
    tmp = cache_dir / f".{split}.u8.tmp"
    need = int(np.prod(shape))
    free = shutil.disk_usage(cache_dir).free + (tmp.stat().st_size if tmp.exists() else 0)
    if need > free:
        raise ImageCacheError(
            f"{cache_dir}: the {split} cache needs {need / 2**30:.1f} GiB ({len(samples)} samples x "
            f"{len(cameras)} cameras x {w}x{h}), {free / 2**30:.1f} GiB free there; pass --out DIR on a "
            "larger disk, or cache fewer splits (--splits)"
        )
    mm = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=shape)

    def write(out: np.memmap, i: int) -> None:
        for j, cam in enumerate(cameras):
            out[i, j] = read_image(Path(data_root) / samples[i]["cams"][cam]["path"], (w, h))

    start = time.perf_counter()
    pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="bevforge-cache")
    try:
        rows = pool.map(functools.partial(write, mm), range(len(samples)))
        for done, _ in enumerate(rows, start=1):  # in sample order: a failed read raises here
            if done % 500 == 0 or done == len(samples):
                rate = done / max(time.perf_counter() - start, 1e-9)
                eta = (len(samples) - done) / rate
                log(f"  cached {done}/{len(samples)} samples ({rate:.1f}/s, {eta / 60:.1f} min left)")
    except BaseException:  # a bad image or Ctrl-C: the queued reads dropped, the partial file removed
        pool.shutdown(wait=True, cancel_futures=True)
        del mm
        tmp.unlink(missing_ok=True)
        raise
    pool.shutdown()
    mm.flush()
    del mm
    tmp.replace(data_path)
    index = {
        "format": CACHE_FORMAT,
        "format_version": CACHE_VERSION,
        "split": split,
        "img_scale": img_scale,
        "cameras": list(cameras),
        "shape": list(shape),
        "tokens": [s["token"] for s in samples],
    }
    atomic_write_json(cache_dir / f"{split}.json", index)
    log(f"wrote {data_path} ({data_path.stat().st_size / 2**20:.1f} MiB)")
    return data_path


class ImageCache:
    """Read side: ``cache[token]`` -> ``[N, H, W, 3]`` uint8 (memmap opened lazily, once per worker)."""

    def __init__(self, cache_dir: str | Path, split: str, cameras: Sequence[str], img_scale: float) -> None:
        self.index_path = Path(cache_dir) / f"{split}.json"
        self.data_path = Path(cache_dir) / f"{split}.u8"
        fix = "re-run `bevforge cache CONFIG` (or set data.image_cache='')"
        if not self.index_path.is_file() or not self.data_path.is_file():
            raise ImageCacheError(f"{self.index_path}: image cache for split {split!r} not found; {fix}")
        try:
            index = json.loads(self.index_path.read_text())
        except json.JSONDecodeError as e:
            raise ImageCacheError(f"{self.index_path}: corrupt cache index ({e}); {fix}") from None
        if index.get("format") != CACHE_FORMAT or index.get("format_version") != CACHE_VERSION:
            raise ImageCacheError(f"{self.index_path}: not a {CACHE_FORMAT} v{CACHE_VERSION} index; {fix}")
        missing = [k for k in ("img_scale", "cameras", "shape", "tokens") if k not in index]
        if missing:
            raise ImageCacheError(f"{self.index_path}: cache index lacks {missing}; {fix}")
        if abs(float(index["img_scale"]) - img_scale) > 1e-9 or list(index["cameras"]) != list(cameras):
            raise ImageCacheError(
                f"{self.index_path}: built for img_scale={index['img_scale']} cameras={index['cameras']}, "
                f"config has img_scale={img_scale} cameras={list(cameras)}; {fix}"
            )
        self.shape = tuple(index["shape"])
        expected = int(np.prod(self.shape))
        if self.data_path.stat().st_size != expected:
            raise ImageCacheError(f"{self.data_path}: size differs from the index (truncated?); {fix}")
        self.rows = {t: i for i, t in enumerate(index["tokens"])}
        self._mm: np.ndarray | None = None

    def __contains__(self, token: str) -> bool:
        return token in self.rows

    def __getitem__(self, token: str) -> np.ndarray:
        if self._mm is None:
            self._mm = np.memmap(self.data_path, dtype=np.uint8, mode="r", shape=self.shape)
        if token not in self.rows:
            raise ImageCacheError(
                f"{self.index_path}: sample {token} not in the cache; re-run `bevforge cache`"
            )
        return np.array(self._mm[self.rows[token]])  # [N, H, W, 3], a writable copy
