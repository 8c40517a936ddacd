"""`bevforge bench eval`: our nuScenes detection metrics vs the devkit's, same large generated submission.

A random nuScenes-format DB (``eval/fake_db.py``, val scene names of v1.0-trainval) and a submission of
``--boxes`` boxes per sample (noisy copies of the GT + false positives) are written to ``--work-dir``.
Timed, on identical inputs:

- end to end: ours (``load_gt_from_db`` + ``evaluate(path)``: submission read (column reader) +
  validation + metrics) without and with the on-disk GT cache warm (``eval/gt_cache.py``, the
  repeated-evaluation case), and warm with the reader held to one process (it uses two when a core is
  idle), each the median of :data:`REPEATS` runs, vs one run of the devkit (``NuScenes(...)`` +
  ``DetectionEval(...)`` + ``evaluate()``); wall and CPU seconds (the machine may be shared: CPU time
  is the steadier ratio), with the load average before and after;
- metrics only: our ``detection_metrics`` on loaded arrays vs ``DetectionEval.evaluate()`` on its boxes.

Both summaries are compared number by number (must agree to 1e-6). Appended to ``benchmarks/results/eval.md``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bevforge.eval.box_table import ATTRIBUTE_NAMES, DETECTION_NAMES, GroundTruth


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenes", type=int, default=20, help="val scenes in the generated DB (<= 150)")
    p.add_argument("--samples-per-scene", type=int, default=40)
    p.add_argument("--objects-per-scene", type=int, default=60)
    p.add_argument("--boxes", type=int, default=300, help="predicted boxes per sample (<= 500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", default="work_dirs/bench_eval", help="where the DB and submission go")
    p.add_argument("--skip-devkit", action="store_true", help="time ours only")
    p.add_argument("--out", default="benchmarks/results/eval.md", help="markdown file to append to")


def make_submission_for(gt: GroundTruth, boxes_per_sample: int, seed: int) -> dict[str, Any]:
    """Noisy copies of every GT box + uniform false positives up to ``boxes_per_sample`` per sample."""
    rng = np.random.default_rng(seed)
    b = gt.boxes
    results: dict[str, list[dict[str, Any]]] = {t: [] for t in gt.sample_tokens}
    for i in range(len(b)):
        tok = gt.sample_tokens[int(b.sample_idx[i])]
        if len(results[tok]) >= boxes_per_sample or rng.random() < 0.2:
            continue
        a = int(b.attr[i]) if rng.random() < 0.8 else int(rng.integers(-1, len(ATTRIBUTE_NAMES)))
        results[tok].append(
            {
                "sample_token": tok,
                "translation": (b.translation[i] + rng.normal(0, 0.7, 3)).tolist(),
                "size": (b.size[i] * rng.uniform(0.8, 1.2, 3)).tolist(),
                "rotation": b.rotation[i].tolist(),
                "velocity": (np.nan_to_num(b.velocity[i]) + rng.normal(0, 1.0, 2)).tolist(),
                "detection_name": DETECTION_NAMES[int(b.label[i])],
                "detection_score": float(rng.uniform(0.2, 1.0)),
                "attribute_name": ATTRIBUTE_NAMES[a] if a >= 0 else "",
            }
        )
    for s, tok in enumerate(gt.sample_tokens):
        need = boxes_per_sample - len(results[tok])
        xy = gt.ego_xyz[s, :2] + rng.uniform(-55, 55, (need, 2))
        for k in range(need):
            results[tok].append(
                {
                    "sample_token": tok,
                    "translation": [float(xy[k, 0]), float(xy[k, 1]), 1.0],
                    "size": rng.uniform(0.5, 5.0, 3).tolist(),
                    "rotation": [1.0, 0.0, 0.0, 0.0],
                    "velocity": rng.normal(0, 2, 2).tolist(),
                    "detection_name": DETECTION_NAMES[int(rng.integers(len(DETECTION_NAMES)))],
                    "detection_score": float(rng.uniform(0.0, 0.5)),
                    "attribute_name": "",
                }
            )
    return {"meta": {"use_camera": True, "use_lidar": False}, "results": results}


REPEATS = 3  # our end-to-end runs per mode (median reported); the devkit runs once (~15-25 s)


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its reaped children (the reader's forked one)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """``fn()``, its wall seconds and its CPU seconds."""
    wall, cpu = time.perf_counter(), _cpu_seconds()
    out = fn()
    return out, time.perf_counter() - wall, _cpu_seconds() - cpu


def _load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def run(args: argparse.Namespace) -> int:
    from bevforge.bench.results import append_result
    from bevforge.eval import submission_reader
    from bevforge.eval.devkit_bridge import max_abs_difference
    from bevforge.eval.fake_db import write_fake_db
    from bevforge.eval.gt import load_gt_from_db
    from bevforge.eval.metrics import detection_metrics
    from bevforge.eval.nuscenes_det import evaluate, parse_submission, read_submission
    from bevforge.eval.submission_reader import read_submission_columns

    work = Path(args.work_dir)
    t0 = time.time()
    db = write_fake_db(
        work / "db",
        num_scenes=args.scenes,
        samples_per_scene=args.samples_per_scene,
        objects_per_scene=args.objects_per_scene,
        seed=args.seed,
        version="v1.0-trainval",
    )
    gt0 = load_gt_from_db(work / "db", db["version"], db["split"], cache=False)
    sub = make_submission_for(gt0, args.boxes, args.seed)
    result_path = work / "results_nusc.json"
    result_path.write_text(json.dumps(sub))
    n_boxes = sum(len(v) for v in sub["results"].values())
    print(
        f"generated {len(gt0.sample_tokens)} samples, {len(gt0.boxes)} GT, {n_boxes} predictions in "
        f"{time.time() - t0:.1f}s"
    )

    cache = work / "gt_cache"  # load_gt_from_db's on-disk cache, here beside the DB (not ~/.cache)
    load_gt_from_db(work / "db", db["version"], db["split"], cache=cache)  # fills it
    load_before = _load()
    modes = {  # name: (GT cache, reader in one process: BEVFORGE_READER_PROCESSES=1)
        "no GT cache": (False, False),
        "GT cache warm": (cache, False),
        "GT cache warm, one process": (cache, True),
    }

    def ours_once(use_cache: bool | Path) -> dict[str, Any]:
        return evaluate(
            result_path, load_gt_from_db(work / "db", db["version"], db["split"], cache=use_cache)
        )

    e2e: dict[str, tuple[float, float]] = {}  # mode: (median wall s, median CPU s)
    results: dict[str, dict[str, Any]] = {}
    saved = os.environ.get("BEVFORGE_READER_PROCESSES")
    for mode, (use_cache, one_process) in modes.items():
        if one_process:
            os.environ["BEVFORGE_READER_PROCESSES"] = "1"
        try:
            runs = [_timed(functools.partial(ours_once, use_cache)) for _ in range(REPEATS)]
        finally:
            os.environ.pop("BEVFORGE_READER_PROCESSES", None)
            if saved is not None:
                os.environ["BEVFORGE_READER_PROCESSES"] = saved
        results[mode] = runs[-1][0]
        e2e[mode] = (statistics.median(r[1] for r in runs), statistics.median(r[2] for r in runs))
    ours = results["GT cache warm"]
    for mode in modes:
        same, _ = max_abs_difference(results[mode], ours)
        assert same == 0, f"{mode} changed a number"
    # where the time goes (separate runs of each step)
    gt, t_gt, _ = _timed(lambda: load_gt_from_db(work / "db", db["version"], db["split"], cache=False))
    (preds, _), t_read, _ = _timed(lambda: read_submission(result_path, gt))
    _, ours_metrics, _ = _timed(lambda: detection_metrics(gt, preds))
    assert len(preds) == len(parse_submission(json.loads(result_path.read_text()), gt))
    raw = result_path.read_bytes()
    reader = "column reader" if read_submission_columns(raw, gt, 500) else "general path"
    if reader == "column reader" and len(raw) >= submission_reader.PARALLEL_MIN_BYTES:
        two = submission_reader._can_fork()  # decided again at each read (idle core?)
        reader += ", two processes" if two else ", one process (no idle core)"
    steps = (
        f"ours, step by step: GT from the tables {t_gt:.3f}s (cached: see the table), submission read + "
        f"validation {t_read:.3f}s ({reader}), metrics {ours_metrics:.3f}s"
    )
    warm = e2e["GT cache warm"]
    print(
        f"ours: end to end {warm[0]:.2f}s (CPU {warm[1]:.2f}s; no GT cache {e2e['no GT cache'][0]:.2f}s, "
        f"one process {e2e['GT cache warm, one process'][0]:.2f}s), metrics {ours_metrics:.3f}s; "
        f"mAP {ours['mean_ap']:.4f} NDS {ours['nd_score']:.4f}\n{steps}"
    )
    rows = [(f"ours ({mode})", wall, cpu, ours_metrics) for mode, (wall, cpu) in e2e.items()]
    diff_text = "devkit skipped"
    if not args.skip_devkit:
        import tempfile

        from nuscenes import NuScenes
        from nuscenes.eval.common.config import config_factory
        from nuscenes.eval.detection.evaluate import DetectionEval

        from bevforge.eval.devkit_bridge import _plain

        t, c = time.perf_counter(), _cpu_seconds()
        nusc = NuScenes(version=db["version"], dataroot=str(work / "db"), verbose=False)
        with tempfile.TemporaryDirectory() as out_dir:
            ev = DetectionEval(
                nusc,
                config_factory("detection_cvpr_2019"),
                str(result_path),
                db["eval_set"],
                output_dir=out_dir,
                verbose=False,
            )
            t_m = time.perf_counter()
            metrics, _ = ev.evaluate()
        dk_metrics = time.perf_counter() - t_m
        dk_e2e, dk_cpu = time.perf_counter() - t, _cpu_seconds() - c
        theirs = _plain(metrics.serialize())
        worst, where = max_abs_difference(ours, theirs)
        diff_text = f"max |ours - devkit| over every number: {worst:.3g} {where}"
        print(
            f"devkit: end to end {dk_e2e:.2f}s (CPU {dk_cpu:.2f}s), metrics {dk_metrics:.3f}s; "
            f"mAP {theirs['mean_ap']:.4f} NDS {theirs['nd_score']:.4f}\n{diff_text}"
        )
        rows.append(("devkit 1.2.0", dk_e2e, dk_cpu, dk_metrics))
        for mode, (wall, cpu) in e2e.items():
            rows.append((f"speed-up ({mode})", dk_e2e / wall, dk_cpu / cpu, dk_metrics / ours_metrics))
    body = [
        f"{len(gt.sample_tokens)} samples ({args.scenes} scenes), {len(gt.boxes)} GT boxes, "
        f"{n_boxes} predictions ({args.boxes}/sample). mAP {ours['mean_ap']:.4f}, "
        f"NDS {ours['nd_score']:.4f}. {diff_text}.",
        "",
        steps + ".",
        "",
        f"Ours: median of {REPEATS} runs per row; the devkit: one run. CPU = user + system seconds of the "
        f"process and its children. Machine load (1-min average, {os.cpu_count()} cores) before ours "
        f"{load_before}, after the devkit {_load()}.",
        "",
        "| | end to end (load + score), wall | end to end, CPU | metrics only |",
        "|---|---|---|---|",
    ]
    for name, wall, cpu, met in rows:
        unit = "x" if name.startswith("speed-up") else " s"
        body.append(f"| {name} | {wall:.2f}{unit} | {cpu:.2f}{unit} | {met:.3f}{unit} |")
    path = append_result(args.out, "nuScenes detection eval: ours vs devkit", "cpu", "\n".join(body))
    print(f"appended to {path}")
    return 0
