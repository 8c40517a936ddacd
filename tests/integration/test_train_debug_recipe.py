"""The real debug recipe (model, criterion, loader) on a tiny synthetic set: golden loss curve and
2-process gloo DDP through ``bevforge launch``.

Golden: ``tests/assets/golden_loss_debug.json``, the first iterations of ``bevformer_debug`` (toy
sizes below, CPU, ``--deterministic``). Tolerance: relative 5e-3 per value (float summation order
differs between CPUs; a real regression moves the curve by far more). After an intended change of
the model, losses, data or trainer regenerate it with ``BEVFORGE_REGEN_GOLDEN=1 pytest <this file>``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bevforge.doctor.smoke import free_port

GOLDEN = Path(__file__).resolve().parents[1] / "assets" / "golden_loss_debug.json"
RTOL = 5e-3
ITERS = 4
TOY = ["data.num_workers=0", "data.img_scale=1.0", "model.bev_h=8", "model.bev_w=8", "model.num_queries=20",
       "train.log_interval=1"]  # fmt: skip
TERMS = ("loss", "loss_cls", "loss_bbox")


@pytest.fixture(scope="module")
def tiny_data(synthetic_data) -> Path:
    return synthetic_data("synthetic", num_scenes=2, samples_per_scene=4, image_wh=(64, 36))


@pytest.mark.parametrize("images_on_device", [False, True])
def test_golden_loss_curve_of_debug_recipe(tiny_data, tmp_path, images_on_device) -> None:
    """Also with ``data.images_on_device`` (uint8 batches, photometric + normalisation in the training
    step): the same curve within the tolerance (its HSV steps are the torch twins of OpenCV's)."""
    from bevforge.config import load_config
    from bevforge.train.trainer import train

    if images_on_device and os.environ.get("BEVFORGE_REGEN_GOLDEN") == "1":
        pytest.skip("the golden is made by the default (CPU image) pipeline")
    sets = [f"data.data_root={tiny_data}", f"data.info_dir={tiny_data / 'infos'}", *TOY,
            f"train.max_iters={ITERS}", "train.deterministic=true", "train.eval_interval=1",
            f"data.images_on_device={str(images_on_device).lower()}"]  # fmt: skip
    cfg = load_config("bevformer_debug", sets)
    torch.manual_seed(0)
    train(cfg, tmp_path, progress=False, tensorboard=False)
    assert not torch.are_deterministic_algorithms_enabled()  # --deterministic does not leak to the caller
    cpu_warning = "data.images_on_device=true on the CPU" in (tmp_path / "output.log").read_text()
    assert cpu_warning == images_on_device
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in recs if "eval" in r]  # the epoch ends at iteration 4: periodic evaluation ran
    assert len(evals) == 1 and "nd_score" in evals[0]["eval"], evals
    assert (tmp_path / "eval_epoch_1" / "metrics_det.json").is_file()
    recs = [r for r in recs if "eval" not in r]
    curve = {t: [r[t] for r in recs] for t in TERMS}
    assert len(curve["loss"]) == ITERS and all(v == v for v in curve["loss"])
    if os.environ.get("BEVFORGE_REGEN_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        note = "regenerate: BEVFORGE_REGEN_GOLDEN=1 pytest tests/integration/test_train_debug_recipe.py"
        record = {"recipe": "bevformer_debug", "overrides": TOY, "iters": ITERS, "rtol": RTOL, "note": note}
        GOLDEN.write_text(json.dumps({**record, "curve": curve}, indent=1) + "\n")
        pytest.skip(f"golden regenerated at {GOLDEN}")
    golden = json.loads(GOLDEN.read_text())["curve"]
    for t in TERMS:
        assert curve[t] == pytest.approx(golden[t], rel=RTOL), (
            f"{t} curve moved: {curve[t]} vs golden {golden[t]}; if intended, regenerate with "
            "BEVFORGE_REGEN_GOLDEN=1"
        )


def test_two_process_ddp_debug_recipe_via_launcher(tiny_data, tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(DATA_PATH=str(tiny_data), CONFIG="bevformer_debug", GPUS="2", WORK_DIR=str(tmp_path),
               PORT=str(free_port()), OMP_NUM_THREADS="1")  # fmt: skip
    cmd = [sys.executable, "-m", "bevforge.cli.main", "launch", "--", "--max-iters", "2", "--no-progress",
           "--set", *TOY]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in recs] == [1, 2] and all(r["loss"] == r["loss"] for r in recs)
    assert "2 process(es) on cpu" in (tmp_path / "output.log").read_text()
    ck = torch.load(tmp_path / "latest.pth", weights_only=True)
    assert ck["world_size"] == 2 and ck["global_iter"] == 2
