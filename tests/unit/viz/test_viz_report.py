"""viz/report.py + `bevforge report`: the curves of a hand-written metrics.jsonl are in the HTML."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

from bevforge.cli.main import main
from bevforge.viz.report import SERIES_COLORS, build_report, x_axis


def _write_run(wd: Path) -> None:
    wd.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(20):
        rec = {"epoch": i // 10, "iter": i * 10, "loss": 10.0 - 0.45 * i, "loss_cls": 1.0 + 0.0 * i,
               "loss_bbox": 2.0, "d0.loss_cls": 1.5, "d0.loss_bbox": 2.5, "lr": 2e-4 * min(1.0, (i + 1) / 5),
               "grad_norm": 5.0 + i, "data_time": 0.1, "step_time": 0.4, "samples_per_s": 8.0,
               "gpu_util": None, "mem_allocated_mib": None if i < 2 else 2048.0 + i,
               "mem_peak_mib": 4096.0}  # fmt: skip
        if i == 7:
            del rec["grad_norm"]  # missing keys are tolerated
        lines.append(json.dumps(rec))
        if i in (9, 19):  # the trainer's periodic evaluation records share the file
            lines.append(json.dumps({"epoch": i // 10, "eval": {"mAP": 0.1 * i, "NDS": 0.2}}))
    lines.append('{"loss": 1.0, "ite')  # a torn last line
    (wd / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (wd / "config.json").write_text(json.dumps({"name": "debug <recipe>", "train": {"lr": 2e-4}}))
    (wd / "metrics_det.json").write_text(
        json.dumps(
            {
                "mean_ap": 0.4167,
                "nd_score": 0.5171,
                "mean_dist_aps": {"car": 0.6, "pedestrian": 0.5},
                "label_aps": {"car": {"0.5": 0.3, "4.0": 0.9}},
                "tp_errors": {"mATE": 0.67, "mASE": 0.27},
                "cfg": {"class_range": {"car": 50}, "dist_ths": [0.5, 4.0]},
            }
        )
    )
    (wd / "vis").mkdir()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(wd / "vis" / "tok.png")


def _plot(html_text: str, key: str) -> tuple[str, np.ndarray]:
    m = re.search(
        rf'<img id="plot-{key}" data-series="([^"]*)"[^>]*src="data:image/png;base64,([^"]+)"', html_text
    )
    assert m, f"plot {key} missing"
    img = Image.open(io.BytesIO(base64.b64decode(m.group(2)))).convert("RGB")
    return m.group(1), np.asarray(img)


def test_viz_report_contains_loss_curve(tmp_path: Path) -> None:
    _write_run(tmp_path / "run")
    text = build_report(tmp_path / "run")
    series, pixels = _plot(text, "losses")
    assert series.split(",") == ["loss", "loss_cls", "loss_bbox"]
    # the `loss` curve (first colour) falls from 10 to 1.45: its left end sits higher (smaller row)
    c0 = np.array([int(SERIES_COLORS[0][i : i + 2], 16) for i in (1, 3, 5)])
    rows, cols = np.nonzero(np.abs(pixels.astype(int) - c0).sum(-1) < 30)
    assert len(cols) > 50
    left, right = cols.min(), cols.max()
    assert rows[cols <= left + 3].mean() < rows[cols >= right - 3].mean() - 50
    assert _plot(text, "layer_losses")[0] == "d0.loss_bbox,d0.loss_cls"
    for key in ("lr", "grad_norm", "throughput", "data_time"):
        _plot(text, key)
    assert 'id="plot-gpu_util"' in text and "no data" in text  # all-null on CPU
    mem_series, _ = _plot(text, "gpu_mem")
    assert mem_series == "mem_allocated_gib,mem_peak_gib"
    assert 'id="plot-eval"' in text and "Evaluation during training" in text
    assert "1 unreadable line(s) skipped" in text and "20 records" in text
    assert "0.4167" in text and "pedestrian" in text and "mATE" in text  # evaluation tables
    assert (
        "<td>mAP</td><td>0.4167</td>" in text and "<th>4.0</th>" in text and "<summary>cfg</summary>" in text
    )
    assert "debug &lt;recipe&gt;" in text  # config, escaped
    assert "tok.png" in text


def test_viz_report_x_axis_prefers_growing_iter() -> None:
    assert x_axis([{"iter": 5}, {"iter": 10}]) == ([5.0, 10.0], "iter")
    assert x_axis([{"iter": 5}, {"iter": 0}]) == ([0.0, 1.0], "logged step")  # iter restarted per epoch


def test_viz_report_cli(tmp_path: Path, capsys) -> None:
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "work dir not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 0  # nothing logged yet: still a report
    text = (tmp_path / "empty" / "report.html").read_text()
    assert "No <code>metrics.jsonl</code>" in text and "No <code>metrics_det.json</code>" in text
