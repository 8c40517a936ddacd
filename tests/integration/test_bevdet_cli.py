"""The unchanged `bevforge train` / `test` / `vis` commands run the BEVDet debug recipe end to end on a
tiny synthetic set (a second model family needs no change outside models/, nn/, ops/, losses/, configs/)."""

from __future__ import annotations

import json

import torch

from bevforge.cli.main import main


def test_bevdet_debug_train_test_vis(tmp_path, capsys, synthetic_data) -> None:
    torch.manual_seed(0)
    data = synthetic_data("bevdet_cli", num_scenes=2, samples_per_scene=2, image_wh=(96, 54))
    sets = [f"data.data_root={data}", f"data.info_dir={data / 'infos'}", "data.num_workers=0",
            "data.img_scale=1.0", "data.batch_size=1", "model.bev_h=32", "model.bev_w=32"]  # fmt: skip
    work = tmp_path / "work"
    rc = main(["train", "configs/bevdet_debug.py", "--work-dir", str(work), "--max-iters", "3",
               "--no-progress", "--set", *sets, "train.log_interval=1"])  # fmt: skip
    assert rc == 0
    recs = [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if "loss" in r]
    assert len(losses) == 3 and all(v == v and v > 0 for v in losses)
    assert json.loads((work / "config.json").read_text())["model"]["arch"] == "bevdet"

    results = work / "test" / "results_nusc.json"
    rc = main(["test", "bevdet_debug", str(work / "latest.pth"), "--out", str(results), "--split", "val",
               "--set", *sets])  # fmt: skip
    assert rc == 0
    val = json.loads((data / "infos" / "infos_val.json").read_text())["samples"]
    assert set(json.loads(results.read_text())["results"]) == {s["token"] for s in val}
    assert (results.parent / "metrics_det.json").is_file()

    vis = work / "vis"
    rc = main(["vis", "--results", str(results), "--data-root", str(data), "--info-file",
               str(data / "infos" / "infos_val.json"), "--out", str(vis), "--max-samples", "1"])  # fmt: skip
    assert rc == 0
    assert len(list(vis.glob("*.png"))) == 1
    capsys.readouterr()
