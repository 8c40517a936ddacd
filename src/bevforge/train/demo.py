"""The demo: synthetic data -> infos -> train the debug recipe -> test -> pictures -> HTML report.

Every stage calls the library that owns it (imported inside the stage). A stage whose library is not
importable says so and the demo goes on; a stage that fails for another reason stops the demo.
Layout of ``out``: ``data/`` (dataset + ``data/infos``), ``work/`` (training, ``work/test``,
``work/vis``, ``work/report.html``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Toy sizes of --quick (seconds on a laptop CPU; the full demo uses the recipe as it is).
QUICK_OVERRIDES = [
    "data.img_scale=1.0",
    "data.num_workers=0",
    "model.bev_h=16",
    "model.bev_w=16",
    "model.num_queries=50",
    "train.log_interval=2",
    "train.warmup_iters=2",
]
DEMO_EPOCHS = 4  # the recipe's schedule: ~5 minutes end to end on 2 idle CPU cores


@dataclass
class DemoPlan:
    out: Path
    num_scenes: int = 10
    samples_per_scene: int = 20
    image_wh: tuple[int, int] = (400, 225)
    overrides: list[str] = field(default_factory=list)
    progress: bool | None = None

    @classmethod
    def make(cls, out: str | Path, quick: bool, epochs: int | None = None) -> DemoPlan:
        """``quick``: 2 tiny scenes, toy model, 6 iterations. Otherwise the full synthetic set and the
        debug recipe for ``epochs`` (default ``DEMO_EPOCHS``, the recipe's 4 epochs over 160 samples:
        ~0.4 s per iteration on 2 idle CPU cores)."""
        plan = cls(Path(out))
        if quick:
            plan.num_scenes, plan.samples_per_scene, plan.image_wh = 2, 6, (96, 54)
            plan.overrides = [*QUICK_OVERRIDES, "train.epochs=1", "train.max_iters=6"]
        else:
            plan.overrides = [f"train.epochs={DEMO_EPOCHS if epochs is None else epochs}"]
        if quick and epochs is not None:
            plan.overrides.append(f"train.epochs={epochs}")
        return plan

    @property
    def data(self) -> Path:
        return self.out / "data"

    @property
    def work(self) -> Path:
        return self.out / "work"


def _stage(name: str, fn: Callable[[], Any], log: Callable[[str], None]) -> Any:
    log(f"== {name}")
    t0 = time.perf_counter()
    try:
        result = fn()
    except ImportError as e:
        log(f"   {name}: this stage is not available yet ({e}); skipping it")
        return None
    log(f"   {name}: done in {time.perf_counter() - t0:.1f}s")
    return result


def run_demo(plan: DemoPlan, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every stage; returns what each produced (paths, metrics)."""
    summary: dict[str, Any] = {}

    def generate() -> Path:
        from bevforge.data.synthetic.generate import generate as gen

        if (plan.data / "v1.0-mini").is_dir():
            log(f"   {plan.data} exists; reusing it")
            return plan.data
        return gen(plan.data, num_scenes=plan.num_scenes, samples_per_scene=plan.samples_per_scene,
                   image_wh=plan.image_wh)  # fmt: skip

    def prepare() -> dict:
        from bevforge.data.nuscenes.prepare import create_infos

        return create_infos(plan.data, "v1.0-mini", plan.data / "infos", log=lambda m: log(f"   {m}"))

    summary["data"] = _stage("1/5 generate synthetic nuScenes-format data", generate, log)
    summary["infos"] = _stage("2/5 prepare info files", prepare, log)

    from bevforge.config import load_config

    sets = [f"data.data_root={plan.data}", f"data.info_dir={plan.data / 'infos'}", *plan.overrides]
    cfg = load_config("bevformer_debug", sets)

    def train_stage() -> dict:
        from bevforge.train.trainer import train

        return train(cfg, plan.work, resume="auto", progress=plan.progress)

    summary["train"] = _stage(f"3/5 train {cfg.name} (work dir {plan.work})", train_stage, log)
    ckpt = plan.work / "latest.pth"

    def test_stage() -> dict:
        from bevforge.eval.pipeline import test_checkpoint

        return test_checkpoint(cfg, ckpt, plan.work / "test" / "results_nusc.json")

    summary["test"] = _stage("4/5 test on the val split (nuScenes metrics)", test_stage, log)
    det = (summary["test"] or {}).get("det") or {}
    if det:
        log(f"   mAP {det.get('mean_ap', float('nan')):.4f}  NDS {det.get('nd_score', float('nan')):.4f}")

    def visualise_and_report() -> dict:
        from bevforge.viz.report import write_report

        out: dict[str, Any] = {}
        results = plan.work / "test" / "results_nusc.json"
        if results.exists():
            from bevforge.viz import render_results

            info = plan.data / "infos" / f"infos_{cfg.data.val_split}.json"
            out["pictures"] = render_results(results, info, plan.data, plan.work / "vis", max_samples=4)
        out["report"] = write_report(plan.work)
        return out

    summary["viz"] = _stage("5/5 pictures + HTML report", visualise_and_report, log)
    report = (summary["viz"] or {}).get("report")
    log(f"demo finished: work dir {plan.work}" + (f", report {report}" if report else ""))
    return summary
