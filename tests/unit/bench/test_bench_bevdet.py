"""`bevforge bench infer/train/data` on the BEVDet recipes (CPU, shrunk with --set, one iteration)."""

from __future__ import annotations

import argparse

import numpy as np
import torch

from bevforge.bench import data as bench_data
from bevforge.bench import infer as bench_infer
from bevforge.bench import train as bench_train
from bevforge.config import load_config
from bevforge.export.rig import rig_lidar2img

SMALL = ["model.bev_h=32", "model.bev_w=32", "data.batch_size=1"]


def _args(module, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


def test_bench_infer_bevdet_eager_ref_and_onnxruntime(tmp_path):
    torch.manual_seed(0)
    out = tmp_path / "infer.md"
    argv = ["configs/bevdet_debug.py", "--modes", "eager,eager-ref,onnxruntime", "--iters", "1"]
    argv += ["--warmup", "0", "--device", "cpu", "--out", str(out), "--set", *SMALL]
    assert bench_infer.run(_args(bench_infer, argv)) == 0
    text = out.read_text()
    context = load_config("configs/bevdet_debug.py").model.bevdet.context_channels
    assert "## inference bevdet_debug" in text and f"input 128x224, context {context}" in text
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert {"eager", "eager-ref", "onnxruntime"} <= set(rows)
    for mode in ("eager", "eager-ref", "onnxruntime"):
        assert "skipped" not in rows[mode] and float(rows[mode].split("|")[2]) > 0, rows[mode]
    assert "pooling plan baked in" in rows["onnxruntime"] and "pooling plan cached" in rows["eager"]

    out = tmp_path / "infer_dynamic.md"
    argv = ["configs/bevdet_debug.py", "--modes", "onnxruntime", "--iters", "1", "--warmup", "0"]
    argv += ["--dynamic-rig", "--device", "cpu", "--out", str(out), "--set", *SMALL]
    assert bench_infer.run(_args(bench_infer, argv)) == 0
    row = next(line for line in out.read_text().splitlines() if line.startswith("| onnxruntime"))
    assert "lidar2img input" in row and "skipped" not in row


def test_bench_train_bevdet_fake_data(tmp_path):
    cfg = load_config("configs/bevdet_r50.py", ["data.batch_size=1"])
    batch = next(iter(bench_train.FakeLoader(cfg, num=1)))
    assert batch.images.shape == (1, 1, 6, 3, 256, 704)  # the recipe's input_size, single frame
    torch.testing.assert_close(batch.lidar2img[0, 0], rig_lidar2img(cfg)[0])  # resize + crop folded in

    torch.manual_seed(0)
    out = tmp_path / "train.md"
    argv = ["configs/bevdet_debug.py", "--fake-data", "--warmup", "0", "--iters", "1", "--out", str(out)]
    assert bench_train.run(_args(bench_train, [*argv, "--set", *SMALL])) == 0
    assert "| configs/bevdet_debug.py | off | 1 |" in out.read_text()
    assert "| eager (fake data) | 1.00x |" in out.read_text()


def test_bench_data_naive_baseline_follows_input_size(tmp_path, synthetic_data):
    from bevforge.cli.main import main as cli_main
    from bevforge.data.augment_image import ImageAugSpec
    from bevforge.data.nuscenes.infos import load_infos

    torch.manual_seed(0)
    root = synthetic_data("bench_data", num_scenes=1, samples_per_scene=2, image_wh=(96, 54))
    over = [f"data.data_root={root}", f"data.info_dir={root / 'infos'}", "data.num_workers=0",
            "data.input_size=[32,80]", "data.img_aug=true", "data.pad_divisor=16", *SMALL]  # fmt: skip
    cfg = load_config("configs/bevdet_debug.py", over)
    split = (
        cfg.data.train_split if (root / "infos" / f"infos_{cfg.data.train_split}.json").is_file() else "val"
    )
    sample = load_infos(root / "infos" / f"infos_{split}.json").samples[0]
    spec = ImageAugSpec.from_config(cfg.data, train=True)
    d = cfg.data
    arr = bench_data.naive_sample(
        [sample], root, d.cameras, d.img_scale, d.img_mean, d.img_std, spec, np.random.default_rng(0)
    )
    assert arr.shape == (6, 32, 80, 3)  # every camera at input_size, not the img_scale size

    out = tmp_path / "data.md"
    args = ["bench", "data", "configs/bevdet_debug.py", "--split", split, "--batches", "1"]
    assert cli_main([*args, "--naive-samples", "1", "--out", str(out), "--set", *over]) == 0
    text = out.read_text()
    assert "bevforge loader" in text and "naive PIL" in text
    assert text.count("input_size=(32, 80), img_aug=True") == 2  # both rows say which geometry


def test_bench_fake_loader_depth_targets_for_depth_supervision():
    from dataclasses import fields

    from bevforge.structures.batch import Batch

    cfg = load_config("configs/bevdet_debug.py", ["data.batch_size=1"])
    if "depth_gt" not in {f.name for f in fields(Batch)} or not hasattr(
        cfg.model.bevdet, "depth_loss_weight"
    ):
        import pytest

        pytest.skip("no depth supervision in this tree (Batch.depth_gt / model.bevdet.depth_loss_weight)")
    cfg.model.bevdet.depth_loss_weight = 1.0
    batch = next(iter(bench_train.FakeLoader(cfg, num=1)))
    stride = cfg.model.bevdet.feat_downsample
    assert batch.depth_gt.shape == (1, 6, 128 // stride, 224 // stride)
    hit = batch.depth_gt > 0
    assert 0.1 < hit.float().mean() < 0.5  # sparse like projected lidar
    assert batch.depth_gt[hit].min() >= cfg.model.bevdet.depth_bins[0]
    cfg.model.bevdet.depth_loss_weight = 0.0
    assert next(iter(bench_train.FakeLoader(cfg, num=1))).depth_gt is None
