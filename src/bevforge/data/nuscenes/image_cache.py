"""Optional pre-resized image cache: uint8 images in one numpy memmap per split + a JSON index.

Layout in ``cache_dir``: ``{split}.u8`` (raw ``[num_samples, N, H, W, 3]`` uint8, RGB, resized by
``img_scale``, not padded) and ``{split}.json`` (format, version, shape, img_scale, cameras, tokens).
Used by the dataset when ``cfg.data.image_cache`` is set; built by ``bevforge cache CONFIG``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
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
) -> Path:
    """Decode + resize every camera image of ``samples`` into ``{cache_dir}/{split}.u8``."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    cam0 = samples[0]["cams"][cameras[0]]
    w, h = target_size(cam0["width"], cam0["height"], img_scale)
    data_path = cache_dir / f"{split}.u8"
    tmp = cache_dir / f".{split}.u8.tmp"
    mm = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=(len(samples), len(cameras), h, w, 3))
    for i, s in enumerate(samples):
        for j, cam in enumerate(cameras):
            c = s["cams"][cam]
            if target_size(c["width"], c["height"], img_scale) != (w, h):
                raise ImageCacheError(
                    f"{c['path']}: camera size differs from the first image; cache needs one size"
                )
            mm[i, j] = read_image(Path(data_root) / c["path"], (w, h))
        if (i + 1) % 500 == 0:
            log(f"  cached {i + 1}/{len(samples)} samples")
    mm.flush()
    del mm
    tmp.replace(data_path)
    index = {
        "format": CACHE_FORMAT,
        "format_version": CACHE_VERSION,
        "split": split,
        "img_scale": img_scale,
        "cameras": list(cameras),
        "shape": [len(samples), len(cameras), h, w, 3],
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
