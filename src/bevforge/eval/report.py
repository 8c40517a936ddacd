"""Printing of evaluation results (rich tables, plain text when rich is unavailable)."""

from __future__ import annotations

import math
from typing import Any

from bevforge.eval.box_table import DETECTION_NAMES

_ERR_NAMES = {
    "trans_err": "mATE",
    "scale_err": "mASE",
    "orient_err": "mAOE",
    "vel_err": "mAVE",
    "attr_err": "mAAE",
}
_COLS = ("trans_err", "scale_err", "orient_err", "vel_err", "attr_err")


def _fmt(v: float) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def detection_lines(m: dict[str, Any], title: str = "nuScenes detection") -> list[str]:
    """Plain-text summary (the devkit's layout)."""
    lines = [f"{title}", f"mAP: {m['mean_ap']:.4f}"]
    lines += [f"{_ERR_NAMES[k]}: {m['tp_errors'][k]:.4f}" for k in _COLS]
    lines += [f"NDS: {m['nd_score']:.4f}", f"Eval time: {m.get('eval_time', 0.0):.2f}s", ""]
    lines.append(
        f"{'Object Class':<20}\t{'AP':<6}\t{'ATE':<6}\t{'ASE':<6}\t{'AOE':<6}\t{'AVE':<6}\t{'AAE':<6}"
    )
    for c in DETECTION_NAMES:
        tp = m["label_tp_errors"][c]
        lines.append(f"{c:<20}\t{m['mean_dist_aps'][c]:<6.3f}\t" + "\t".join(f"{tp[k]:<6.3f}" for k in _COLS))
    return lines


def print_detection(m: dict[str, Any], title: str = "nuScenes detection") -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover - rich is a dependency
        print("\n".join(detection_lines(m, title)))
        return
    summary = Table(title=title)
    for name in ("mAP", *(_ERR_NAMES[k] for k in _COLS), "NDS", "time (s)"):
        summary.add_column(name, justify="right")
    summary.add_row(
        _fmt(m["mean_ap"]),
        *(_fmt(m["tp_errors"][k]) for k in _COLS),
        _fmt(m["nd_score"]),
        f"{m.get('eval_time', 0.0):.2f}",
    )
    per_class = Table(title="per class")
    per_class.add_column("class")
    for name in ("AP", "ATE", "ASE", "AOE", "AVE", "AAE"):
        per_class.add_column(name, justify="right")
    for c in DETECTION_NAMES:
        tp = m["label_tp_errors"][c]
        per_class.add_row(c, _fmt(m["mean_dist_aps"][c]), *(_fmt(tp[k]) for k in _COLS))
    console = Console()
    console.print(summary)
    console.print(per_class)


def print_comparison(ours: dict[str, Any], devkit: dict[str, Any], max_diff: float, where: str) -> None:
    print(
        f"ours:   mAP {ours['mean_ap']:.6f}  NDS {ours['nd_score']:.6f}  time {ours.get('eval_time', 0):.3f}s"
    )
    print(
        f"devkit: mAP {devkit['mean_ap']:.6f}  NDS {devkit['nd_score']:.6f}  "
        f"time {devkit.get('eval_time', 0):.3f}s"
    )
    status = "OK" if max_diff <= 1e-6 else "MISMATCH"
    print(
        f"max |ours - devkit| over every number: {max_diff:.3g} {('at ' + where) if where else ''} [{status}]"
    )


def print_seg(result: dict[str, Any]) -> None:
    lines = [f"{c:<20} IoU {_fmt(v)}" for c, v in result["iou"].items()]
    print("BEV map segmentation\n" + "\n".join(lines) + f"\n{'mIoU':<20}     {_fmt(result['miou'])}")
