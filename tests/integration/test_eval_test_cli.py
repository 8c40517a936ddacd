"""`bevforge test` end to end on a tiny synthetic set: 1 process vs 2 gloo processes (whole scenes per
rank, same results file), every sample present, metrics files, `bevforge eval` on the DB with --devkit,
and a check that the comparison is sensitive to the temporal history (a split scene would show)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bevforge.cli.main import main as cli_main
from bevforge.doctor.smoke import free_port

OVERRIDES = ["data.num_workers=0"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, synthetic_data):
    from bevforge.config import load_config
    from bevforge.models.build import build_model

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("eval_cli")  # checkpoint and outputs
    data = synthetic_data("syn", num_scenes=3, samples_per_scene=3, seed=0, image_wh=(96, 54))
    sets = [f"data.data_root={data}", f"data.info_dir={data / 'infos'}", *OVERRIDES]
    cfg = load_config("bevformer_debug", sets)
    model = build_model(cfg)
    ckpt = root / "ckpt.pth"
    torch.save({"model": model.state_dict(), "epoch": 0}, ckpt)
    return root, data, sets, ckpt


def _results(path: Path) -> dict:
    return json.loads(path.read_text())["results"]


def test_eval_test_cli_one_vs_two_processes(setup):
    root, data, sets, ckpt = setup
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the torchrun processes below run with OMP_NUM_THREADS=1: same numerics
    out1 = root / "one" / "results_nusc.json"
    try:
        rc = cli_main(
            ["test", "bevformer_debug", str(ckpt), "--out", str(out1), "--split", "train", "--set", *sets]
        )
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    assert (out1.parent / "metrics_det.json").is_file()
    infos = json.loads((data / "infos" / "infos_train.json").read_text())["samples"]
    assert set(_results(out1)) == {s["token"] for s in infos}  # every sample, nothing else
    assert len({s["scene_token"] for s in infos}) == 2  # two scenes -> one per rank below

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    out2 = root / "two" / "results_nusc.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "bevforge.cli.main", "test", "bevformer_debug", str(ckpt), "--out", str(out2),
           "--split", "train", "--set", *sets]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r1, r2 = _results(out1), _results(out2)
    assert list(r1) == list(r2)
    for tok in r1:
        assert len(r1[tok]) == len(r2[tok])
        for a, b in zip(r1[tok], r2[tok]):
            assert a["detection_name"] == b["detection_name"]
            np.testing.assert_allclose(a["translation"], b["translation"], atol=1e-4)
            assert a["detection_score"] == pytest.approx(b["detection_score"], abs=1e-5)

    # the same file scored from the DB tables, with the official devkit beside it
    rc = cli_main(["eval", str(out1), "--data-root", str(data), "--version", "v1.0-mini", "--split", "train",
                   "--devkit", "--out", str(root / "one" / "metrics_db.json")])  # fmt: skip
    assert rc == 0
    # ground truth from the infos (bevforge test) == from the DB tables (bevforge eval) == genuine devkit
    from bevforge.eval.devkit_bridge import devkit_db_metrics, max_abs_difference

    from_infos = json.loads((root / "one" / "metrics_det.json").read_text())
    from_db = json.loads((root / "one" / "metrics_db.json").read_text())
    genuine = devkit_db_metrics(data, "v1.0-mini", "mini_train", out1)
    for other in (from_db, genuine):
        worst, where = max_abs_difference(from_infos, other)
        assert worst <= 1e-6, (worst, where)


def test_eval_runner_history_changes_predictions(setup, tmp_path):
    """Resetting the temporal state mid-scene changes the predictions, so the 1-vs-2 process equality
    above would catch a rank that starts inside a scene."""
    from bevforge.config import load_config
    from bevforge.data.loader import build_dataloader
    from bevforge.eval.pipeline import evaluate_model, load_checkpoint
    from bevforge.eval.runner import infer_batches, run_inference
    from bevforge.models.build import build_model

    _, _, sets, ckpt = setup
    torch.manual_seed(0)
    cfg = load_config("bevformer_debug", sets)
    model = build_model(cfg)
    load_checkpoint(model, ckpt)
    loader = build_dataloader(cfg, "train", train=False)
    carried = run_inference(model, loader, cfg)
    fresh = {}
    for batch in loader:  # every frame alone: no history
        fresh.update(infer_batches(model, [batch], cfg))
    infos = json.loads((setup[1] / "infos" / "infos_train.json").read_text())["samples"]
    first_of_scene = {s["token"] for s in infos if s["prev"] == ""}
    for tok in carried:
        same = np.allclose(carried[tok]["scores"], fresh[tok]["scores"], atol=1e-6)
        assert same == (tok in first_of_scene), tok
    # the trainer's periodic-evaluation entry point writes the same kind of files
    summary = evaluate_model(model, cfg, tmp_path, split="train", metrics=("det",))
    assert 0.0 <= summary["det"]["nd_score"] <= 1.0 and (tmp_path / "metrics_det.json").is_file()


def test_eval_test_cli_channels_last(setup, tmp_path, monkeypatch):
    """``bevforge test`` with ``train.channels_last=true`` runs the backbone and neck channels-last (as
    the recipe trains) and predicts what the NCHW model predicts; both run inference under the training's
    kernel choices (``inference_backends``: cuDNN autotuning, TF32)."""
    import contextlib

    import bevforge.train.setup as setup_module

    root, data, sets, ckpt = setup
    calls, backends = [], []
    real = setup_module.channels_last_
    monkeypatch.setattr(setup_module, "channels_last_", lambda model: calls.append(1) or real(model))
    real_backends = setup_module.inference_backends

    @contextlib.contextmanager
    def recording(tc):
        with real_backends(tc):
            backends.append(torch.backends.cudnn.benchmark)
            yield

    monkeypatch.setattr(setup_module, "inference_backends", recording)
    outs = {}
    for layout, extra in (("nchw", []), ("nhwc", ["train.channels_last=true"])):
        outs[layout] = tmp_path / layout / "results_nusc.json"
        argv = ["test", "bevformer_debug", str(ckpt), "--out", str(outs[layout]), "--split", "val"]
        assert cli_main([*argv, "--set", *sets, *extra]) == 0
    assert calls == [1]
    assert backends == [True, True], backends  # the debug recipe is not deterministic: autotuned
    r1, r2 = _results(outs["nchw"]), _results(outs["nhwc"])
    assert list(r1) == list(r2) and r1
    for tok in r1:
        for a, b in zip(r1[tok], r2[tok], strict=True):
            np.testing.assert_allclose(a["translation"], b["translation"], atol=1e-3)
            assert a["detection_score"] == pytest.approx(b["detection_score"], abs=1e-4)
