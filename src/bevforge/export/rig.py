"""Network input size and camera rigs for code that builds inputs without the dataset (export, benchmarks).

Both follow evaluation's image geometry (:func:`bevforge.data.augment_image.eval_input_geometry`):
``data.input_size`` (BEVDet: the deterministic resize + bottom crop to e.g. 256 x 704) when set, else the
``data.img_scale`` resize; then padding (right/bottom) to ``data.pad_divisor``, which moves no pixel.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from bevforge.config import Config

#: nuScenes camera images (width, height); the synthetic set renders 400 x 225
NUSCENES_RAW_WH = (1600, 900)
SYNTHETIC_RAW_WH = (400, 225)

#: (yaw from the car's forward axis in degrees, focal / image width) of the six nuScenes cameras
_RING = ((0.0, 0.791), (-55.0, 0.791), (55.0, 0.791), (180.0, 0.506), (110.0, 0.791), (-110.0, 0.791))


def default_raw_wh(cfg: Config) -> tuple[int, int]:
    """The recipe's raw camera size: 400 x 225 for the synthetic set, else nuScenes' 1600 x 900."""
    return SYNTHETIC_RAW_WH if "synthetic" in cfg.data.data_root else NUSCENES_RAW_WH


def input_geometry(cfg: Config, raw_wh: tuple[int, int] | None = None) -> tuple[tuple[int, int], np.ndarray]:
    """``((H, W) padded network input, [4, 4] float64 post)``: ``post @ lidar2img_raw`` is the input's
    lidar2img (evaluation's resize / resize + crop of a ``raw_wh = (W, H)`` image)."""
    from bevforge.data.augment_image import eval_input_geometry

    raw_wh = raw_wh or default_raw_wh(cfg)
    (h, w), post = eval_input_geometry(cfg.data, (int(raw_wh[0]), int(raw_wh[1])))
    div = cfg.data.pad_divisor
    return (int(math.ceil(h / div) * div), int(math.ceil(w / div) * div)), post


def input_hw(cfg: Config, raw_wh: tuple[int, int] | None = None) -> tuple[int, int]:
    """(H, W) of the padded network input (``data.input_size`` or the ``data.img_scale`` resize)."""
    return input_geometry(cfg, raw_wh)[0]


def ring_lidar2img_raw(num_cams: int, raw_wh: tuple[int, int]) -> np.ndarray:
    """``[N, 4, 4]`` float64 lidar -> RAW camera pixels of a nuScenes-like ring.

    LIDAR_TOP convention: x right, y forward, z up; cameras (x right, y down, z forward) sit 0.3 m below
    the lidar, looking ``yaw`` degrees ccw from forward, principal point at the image centre.
    """
    w, h = raw_wh
    mats = []
    for i in range(num_cams):
        yaw_deg, focal_ratio = _RING[i % len(_RING)]
        a = math.radians(yaw_deg)
        forward = np.array([-math.sin(a), math.cos(a), 0.0])
        right = np.array([math.cos(a), math.sin(a), 0.0])
        cam2lidar = np.eye(4)
        cam2lidar[:3, :3] = np.stack([right, [0.0, 0.0, -1.0], forward], axis=1)  # columns: cam x, y, z
        cam2lidar[:3, 3] = (0.0, 0.0, -0.3)
        k = np.eye(4)
        f = focal_ratio * w
        k[:3, :3] = ((f, 0.0, w / 2.0), (0.0, f, h / 2.0), (0.0, 0.0, 1.0))
        mats.append(k @ np.linalg.inv(cam2lidar))  # [4, 4]
    return np.stack(mats)  # [N, 4, 4]


def rig_lidar2img(cfg: Config, raw_wh: tuple[int, int] | None = None) -> torch.Tensor:
    """``[1, N, 4, 4]`` float32 lidar -> network-input pixels of a nuScenes-like ring (for checks and
    benchmarks): the raw ring of :func:`ring_lidar2img_raw` through evaluation's image geometry
    (:func:`input_geometry`)."""
    raw_wh = raw_wh or default_raw_wh(cfg)
    _, post = input_geometry(cfg, raw_wh)
    mats = post[None] @ ring_lidar2img_raw(len(cfg.data.cameras), raw_wh)  # [N, 4, 4]
    return torch.tensor(mats, dtype=torch.float32)[None]  # [1, N, 4, 4]


def rig_from_infos(cfg: Config, split: str, index: int = 0) -> torch.Tensor:
    """``[1, N, 4, 4]`` float32: the ``lidar2img`` evaluation feeds for sample ``index`` of
    ``{data.info_dir}/infos_{split}.json`` (its calibration through :func:`input_geometry`, per camera).

    ``ValueError`` naming the file when the sample or a camera of ``data.cameras`` is missing."""
    from bevforge.data.nuscenes.infos import load_infos

    path = Path(cfg.data.info_dir) / f"infos_{split}.json"
    samples = load_infos(path).samples
    if not 0 <= index < len(samples):
        raise ValueError(f"{path}: no sample {index} (it holds {len(samples)}); pick 0..{len(samples) - 1}")
    cams = samples[index]["cams"]
    missing = [c for c in cfg.data.cameras if c not in cams]
    if missing:
        raise ValueError(f"{path}: sample {index} lacks cameras {missing} of data.cameras; fix data.cameras")
    mats = []
    for cam in cfg.data.cameras:
        c = cams[cam]
        _, post = input_geometry(cfg, (int(c["width"]), int(c["height"])))
        mats.append(post @ np.asarray(c["lidar2img"], dtype=np.float64))  # [4, 4]
    return torch.tensor(np.stack(mats), dtype=torch.float32)[None]  # [1, N, 4, 4]
