"""Export/benchmark rigs follow evaluation's image geometry (data.input_size or data.img_scale) and the
infos' calibration exactly as the dataset feeds it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bevforge.config import load_config
from bevforge.export.rig import input_hw, rig_from_infos, rig_lidar2img


def _project(lidar2img: torch.Tensor, point: list[float]) -> np.ndarray:
    p = lidar2img.double() @ torch.tensor([*point, 1.0], dtype=torch.float64)  # [4]
    return (p[:2] / p[2]).numpy()


def test_export_rig_honours_input_size():
    cfg = load_config("configs/bevdet_r50.py")
    assert input_hw(cfg) == (256, 704)  # resize 0.44 of 1600 x 900 and a bottom crop to 256 rows
    rig = rig_lidar2img(cfg)
    assert rig.shape == (1, 6, 4, 4)
    # a far point straight ahead of the front camera: the principal point (800, 450) of the raw image,
    # resized by 704 / 1600 = 0.44 -> (352, 198), minus the crop of 396 - 256 = 140 rows -> (352, 58)
    np.testing.assert_allclose(_project(rig[0, 0], [0.0, 1e5, -0.3]), [352.0, 58.0], atol=1e-2)
    cfg.data.input_size = ()
    cfg.data.img_aug = False
    cfg.data.img_scale = 0.5
    assert input_hw(cfg) == (480, 800)  # 450 x 800 padded to 32
    np.testing.assert_allclose(
        _project(rig_lidar2img(cfg)[0, 0], [0.0, 1e5, -0.3]), [400.0, 225.0], atol=1e-2
    )
    debug = load_config("configs/bevformer_debug.py")
    assert input_hw(debug) == (128, 224)  # synthetic 400 x 225 x 0.5 -> 200 x 112, padded


def test_export_rig_from_infos_is_what_evaluation_feeds(synthetic_data):
    from bevforge.data.loader import build_dataloader

    torch.manual_seed(0)
    data = synthetic_data("export_rig", num_scenes=1, samples_per_scene=2, image_wh=(96, 54))
    cfg = load_config(
        "configs/bevdet_debug.py",
        [
            f"data.data_root={data}",
            f"data.info_dir={data / 'infos'}",
            "data.num_workers=0",
            "data.input_size=[32,80]",
            "data.pad_divisor=16",
        ],  # fmt: skip
    )
    split = "train" if (data / "infos" / "infos_train.json").is_file() else "val"
    batch = next(iter(build_dataloader(cfg, split, train=False, batch_size=1, shuffle=False)))
    rig = rig_from_infos(cfg, split, 0)
    torch.testing.assert_close(rig, batch.lidar2img[:, -1], rtol=1e-6, atol=1e-4)
    assert input_hw(cfg, (96, 54)) == tuple(batch.images.shape[-2:])
    with pytest.raises(ValueError, match="no sample 99"):
        rig_from_infos(cfg, split, 99)
