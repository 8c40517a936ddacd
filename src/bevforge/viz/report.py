"""One self-contained ``report.html`` for a training work dir (plots embedded as base64 PNG).

Reads, each optional and tolerated when missing or partial:
- ``metrics.jsonl``: one JSON record per logged step (epoch, iter, loss, loss_cls, loss_bbox, d{i}.*,
  lr, grad_norm, data_time, step_time, samples_per_s, gpu_util, gpu_mem_allocated/reserved/peak);
  values may be null (CPU) or absent; unreadable lines are counted and skipped.
- ``metrics_det.json``: evaluation numbers (mAP, NDS, per-class APs, TP errors; any nesting).
- ``config.json``: the resolved config.
- ``vis/*.png``: a few visualised samples.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bevforge.io import atomic_write_text

#: Colour of the i-th series in every plot (matplotlib's tab10); series 0 of "losses" is ``loss``.
SERIES_COLORS: tuple[str, ...] = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip
GIB = 2**30


@dataclass
class Panel:
    """One plot: ``key`` (HTML id ``plot-<key>``), title, y label, the series plotted and the PNG bytes."""

    key: str
    title: str
    ylabel: str
    series: list[str]
    png: bytes | None  # None: no data for any series


def read_metrics(path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """Records of a ``metrics.jsonl`` and the number of lines that were not a JSON object."""
    path = Path(path)
    if not path.is_file():
        return [], 0
    records, bad = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1  # e.g. a torn last line of a killed run
            continue
        if isinstance(rec, dict):
            records.append(rec)
        else:
            bad += 1
    return records, bad


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) else None


def x_axis(records: Sequence[dict[str, Any]]) -> tuple[list[float], str]:
    """The x values: ``step`` if every record has one, else ``iter`` when it only grows, else the index."""
    for key in ("step", "global_step", "iter"):
        xs = [_num(r.get(key)) for r in records]
        if records and all(x is not None for x in xs) and all(b > a for a, b in zip(xs, xs[1:])):
            return [float(x) for x in xs], key  # type: ignore[arg-type]
    return [float(i) for i in range(len(records))], "logged step"


def series(
    records: Sequence[dict[str, Any]], xs: Sequence[float], key: str
) -> tuple[list[float], list[float]]:
    """(x, y) of ``key`` where it is a finite number (null / absent / NaN skipped)."""
    pts = [(x, _num(r.get(key))) for x, r in zip(xs, records)]
    kept = [(x, y) for x, y in pts if y is not None]
    return [p[0] for p in kept], [p[1] for p in kept]  # type: ignore[misc]


MEM_KEYS = ("allocated", "reserved", "peak")


def _derived(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``data_time_share`` = data_time / step_time and ``mem_<kind>_gib`` GPU memory in GiB.

    Memory comes as ``mem_<kind>_mib`` (the trainer's monitor) or ``gpu_mem_<kind>`` in unknown units:
    max > 1e6 is read as bytes, > 256 as MiB, else GiB.
    """
    raw = [_num(r.get(f"gpu_mem_{k}")) or 0.0 for r in records for k in MEM_KEYS]
    peak = max(raw, default=0.0)
    scale = 1.0 / GIB if peak > 1e6 else (1.0 / 1024 if peak > 256 else 1.0)
    out = []
    for r in records:
        r = dict(r)
        dt, st = _num(r.get("data_time")), _num(r.get("step_time"))
        r["data_time_share"] = dt / st if dt is not None and st else None
        for k in MEM_KEYS:
            mib, other = _num(r.get(f"mem_{k}_mib")), _num(r.get(f"gpu_mem_{k}"))
            r[f"mem_{k}_gib"] = (
                mib / 1024 if mib is not None else (other * scale if other is not None else None)
            )
        out.append(r)
    return out


def _plot(
    records: list[dict[str, Any]],
    xs: list[float],
    xlabel: str,
    keys: list[str],
    title: str,
    ylabel: str,
    logy: bool,
) -> bytes | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = [(k, *series(records, xs, k)) for k in keys]
    data = [d for d in data if d[1]]
    if not data:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.4), dpi=100)
    try:
        for k, x, y in data:
            ax.plot(x, y, label=k, linewidth=1.5, **_style(k, keys.index(k)))
        if logy and all(v > 0 for _, _, y in data for v in y):
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if len(data) > 1:
            ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)


def _style(key: str, index: int) -> dict[str, str]:
    """Line style: decoder-layer terms ``d{i}.<term>`` take layer i's colour, dashed for non-cls terms;
    any other series takes the colour of its position."""
    m = re.match(r"d(\d+)\.(.*)", key)
    if m:
        return {"color": SERIES_COLORS[int(m.group(1)) % len(SERIES_COLORS)],
                "linestyle": "-" if "cls" in m.group(2) else "--"}  # fmt: skip
    return {"color": SERIES_COLORS[index % len(SERIES_COLORS)], "linestyle": "-"}


def _layer_key(k: str) -> tuple[int, str]:
    m = re.match(r"d(\d+)\.(.*)", k)
    return (int(m.group(1)), m.group(2)) if m else (10**6, k)


def build_panels(records: list[dict[str, Any]]) -> list[Panel]:
    """The report's plots, in order; a panel whose series are all missing has ``png=None``."""
    recs = _derived(records)
    xs, xlabel = x_axis(recs)
    all_keys = list(dict.fromkeys(k for r in recs for k in r))
    main_losses = ["loss"] + [k for k in all_keys if k.startswith("loss_")]
    layer_losses = sorted((k for k in all_keys if re.match(r"d\d+\.", k)), key=_layer_key)
    specs = [
        ("losses", "Losses (last decoder layer)", "loss", main_losses, True),
        ("layer_losses", "Losses per decoder layer", "loss", layer_losses, True),
        ("lr", "Learning rate", "lr", ["lr"], False),
        ("grad_norm", "Gradient norm (before clipping)", "norm", ["grad_norm"], True),
        ("throughput", "Throughput", "samples / s", ["samples_per_s"], False),
        ("data_time", "Data-loading share of the step time", "data_time / step_time",
         ["data_time_share"], False),
        ("gpu_util", "GPU utilisation", "%", ["gpu_util"], False),
        ("gpu_mem", "GPU memory", "GiB", [f"mem_{k}_gib" for k in MEM_KEYS], False),
    ]  # fmt: skip
    panels = []
    for key, title, ylabel, keys, logy in specs:
        png = _plot(recs, xs, xlabel, keys, title, ylabel, logy) if keys else None
        present = [k for k in keys if series(recs, xs, k)[0]]
        panels.append(Panel(key, title, ylabel, present, png))
    return panels


# ------------------------------------------------------------------ HTML


def _e(v: Any) -> str:
    return html.escape(str(v))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"
    return _e(v)


def _table(rows: list[list[Any]], header: list[str] | None = None) -> str:
    head = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


#: Display names of the nuScenes summary keys (``DetectionMetrics.serialize``).
EVAL_ALIASES = {"mean_ap": "mAP", "nd_score": "NDS"}


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, str | int | float | bool)


def render_eval(metrics: Any) -> str:
    """Evaluation numbers as tables, for any nesting: top-level scalars (mAP, NDS, ... first), a 2-column
    table per flat dict (TP errors, per-class APs), a 2-D table per dict of flat dicts (per-class APs by
    distance, per-class TP errors), anything else as collapsed JSON (e.g. the eval config)."""
    if not isinstance(metrics, dict):
        return f"<pre>{_e(json.dumps(metrics, indent=1))}</pre>"
    scalars = [[EVAL_ALIASES.get(k, k), v] for k, v in metrics.items() if _is_scalar(v)]
    scalars.sort(key=lambda r: r[0] not in ("mAP", "NDS"))
    parts = [_table(scalars, ["metric", "value"])] if scalars else []
    for k, v in metrics.items():
        if _is_scalar(v):
            continue
        if isinstance(v, dict) and v and all(_is_scalar(x) for x in v.values()):
            parts.append(f"<h3>{_e(k)}</h3>" + _table([[a, b] for a, b in v.items()], ["", "value"]))
        elif (
            isinstance(v, dict)
            and v
            and all(isinstance(x, dict) and all(_is_scalar(y) for y in x.values()) for x in v.values())
        ):
            cols = list(dict.fromkeys(c for x in v.values() for c in x))
            rows = [[name] + [x.get(c, "") for c in cols] for name, x in v.items()]
            parts.append(f"<h3>{_e(k)}</h3>" + _table(rows, [""] + cols))
        else:
            text = json.dumps(v, indent=1)
            parts.append(f"<details><summary>{_e(k)}</summary><pre>{_e(text)}</pre></details>")
    return "".join(parts)


def find_file(work_dir: Path, name: str) -> Path | None:
    """``work_dir/name``, else the newest ``name`` up to 3 folders below (e.g. ``test/metrics_det.json``)."""
    if (work_dir / name).is_file():
        return work_dir / name
    found = [p for d in ("*", "*/*", "*/*/*") for p in work_dir.glob(f"{d}/{name}") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _eval_section(work_dir: Path, name: str, hint: str) -> str:
    path = find_file(work_dir, name)
    if path is None:
        return f"<p>No <code>{_e(name)}</code> ({hint}).</p>"
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return f"<p>{_e(path)}: not valid JSON ({_e(e)}); rerun <code>bevforge test</code>.</p>"
    return f"<p><code>{_e(path.relative_to(work_dir))}</code></p>" + render_eval(data)


def _summary(records: list[dict[str, Any]], bad: int) -> str:
    if not records:
        return "<p>No <code>metrics.jsonl</code> records.</p>"
    last = records[-1]
    keys = [k for k in dict.fromkeys(k for r in records for k in r) if k not in ("epoch", "iter", "step")]
    rows = []
    for k in keys:
        vals = [v for v in (_num(r.get(k)) for r in records) if v is not None]
        if vals:
            rows.append([k, vals[0], vals[-1], min(vals), max(vals), len(vals)])
    pos = f"epoch {last.get('epoch', '?')}, iter {last.get('iter', '?')}"
    note = f" ({bad} unreadable line(s) skipped)" if bad else ""
    return f"<p>{len(records)} records, last at {_e(pos)}{_e(note)}.</p>" + _table(
        rows, ["key", "first", "last", "min", "max", "n"]
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


CSS = (
    "body{font-family:sans-serif;margin:1.5em;max-width:1400px}table{border-collapse:collapse;margin:.5em 0}"
    "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}th{background:#eee}"
    ".plots{display:flex;flex-wrap:wrap;gap:8px}.nodata{color:#888;width:640px}img.vis{max-width:100%}"
)


def _periodic_eval(eval_records: list[dict[str, Any]]) -> str:
    """Table (and plot) of the ``{"epoch", "eval"}`` records: one row per evaluation."""
    flat = [
        {"epoch": r.get("epoch"), **{k: v for k, v in r["eval"].items() if _is_scalar(v)}}
        for r in eval_records
    ]
    keys = [k for k in dict.fromkeys(k for r in flat for k in r) if k != "epoch"]
    rows = [[r.get("epoch")] + [r.get(k, "") for k in keys] for r in flat]
    html_text = _table(rows, ["epoch"] + keys)
    xs = [float(_num(r.get("epoch")) or i) for i, r in enumerate(flat)]
    png = _plot(flat, xs, "epoch", [k for k in keys if series(flat, xs, k)[0]], "Evaluation", "value", False)
    if png is not None:
        html_text += f'<img id="plot-eval" alt="evaluation" src="data:image/png;base64,{_b64(png)}">'
    return html_text


def build_report(work_dir: str | Path, max_images: int = 6) -> str:
    """The HTML text of the report of ``work_dir``."""
    wd = Path(work_dir)
    all_records, bad = read_metrics(wd / "metrics.jsonl")
    # the trainer's periodic evaluation appends {"epoch": e, "eval": {...}} records to the same file
    eval_records = [r for r in all_records if isinstance(r.get("eval"), dict)]
    records = [r for r in all_records if "eval" not in r]
    parts = [f"<h1>bevforge run report</h1><p><code>{_e(wd.resolve())}</code></p>", "<h2>Training</h2>"]
    parts.append(_summary(records, bad))
    parts.append('<div class="plots">')
    for p in build_panels(records) if records else []:
        if p.png is None:
            parts.append(f'<div class="nodata" id="plot-{p.key}"><b>{_e(p.title)}</b>: no data</div>')
        else:
            parts.append(
                f'<img id="plot-{p.key}" data-series="{_e(",".join(p.series))}" alt="{_e(p.title)}" '
                f'src="data:image/png;base64,{_b64(p.png)}">'
            )
    parts.append("</div>")
    if eval_records:
        parts.append("<h2>Evaluation during training</h2>" + _periodic_eval(eval_records))
    parts.append("<h2>Evaluation</h2>")
    parts.append(_eval_section(wd, "metrics_det.json", "run <code>bevforge test</code>"))
    if find_file(wd, "metrics_seg.json") is not None:
        parts.append("<h3>Map segmentation</h3>" + _eval_section(wd, "metrics_seg.json", ""))
    parts.append("<h2>Samples</h2>")
    images = sorted((wd / "vis").glob("*.png"))[:max_images]
    if not images:
        parts.append("<p>No pictures in <code>vis/</code> (run <code>bevforge vis</code>).</p>")
    for img in images:
        parts.append(
            f'<p>{_e(img.name)}</p><img class="vis" src="data:image/png;base64,{_b64(img.read_bytes())}">'
        )
    parts.append("<h2>Config</h2>")
    cfg = wd / "config.json"
    text = cfg.read_text() if cfg.is_file() else "(no config.json)"
    parts.append(f"<details open><summary>config.json</summary><pre>{_e(text)}</pre></details>")
    body = "\n".join(parts)
    head = f'<meta charset="utf-8"><title>bevforge report</title><style>{CSS}</style>'
    return f"<!doctype html><html><head>{head}</head><body>{body}</body></html>\n"


def write_report(work_dir: str | Path, out: str | Path | None = None, max_images: int = 6) -> Path:
    """Write ``report.html`` (default ``work_dir/report.html``) atomically; returns its path."""
    wd = Path(work_dir)
    if not wd.is_dir():
        raise FileNotFoundError(f"{wd}: work dir not found; pass the folder `bevforge train` wrote into")
    return atomic_write_text(out or wd / "report.html", build_report(wd, max_images))
