"""The evaluation pipelines behind ``bevforge test`` (checkpoint -> results + metrics) and ``bevforge eval``.

``test_checkpoint``: build the model, load the trainer's checkpoint (``{"model": state_dict}``,
``torch.load(weights_only=True)``), run scene-whole inference (1 process or ``torchrun``), write the
submission JSON atomically, score it against the split's infos, write ``metrics_det.json`` /
``metrics_seg.json`` beside it. ``eval_results``: score any submission against the DB or an info file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bevforge.config import Config
from bevforge.errors import CheckpointError
from bevforge.eval.box_table import GroundTruth
from bevforge.eval.metrics import DetectionEvalConfig
from bevforge.eval.nuscenes_det import evaluate, make_submission, write_submission
from bevforge.io import atomic_write_text

if TYPE_CHECKING:  # torch is imported where a model is run: `bevforge eval` (scoring only) never needs it
    import torch


def load_checkpoint(model: torch.nn.Module, path: str | Path) -> dict[str, Any]:
    """Load a trainer checkpoint (``{"model": state_dict, ...}``) strictly into ``model``."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; pass the .pth written by `bevforge train`")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        raise CheckpointError(f"{path}: cannot be read with torch.load(weights_only=True): {e}") from None
    state = ckpt.get("model") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path}: expected a dict with key 'model' (a bevforge trainer checkpoint); convert official "
            f"BEVFormer checkpoints first (models/checkpoint_adapter.py)"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(
            f"{path}: does not fit this config's model: {str(e).splitlines()[0]} ..."
        ) from None
    return ckpt


def _json_default(o: Any) -> Any:
    if isinstance(o, np.floating | np.integer):
        return o.item()
    raise TypeError(type(o).__name__)


def write_metrics(path: str | Path, metrics: dict[str, Any]) -> Path:
    return atomic_write_text(path, json.dumps(metrics, indent=2, default=_json_default) + "\n")


def seg_from_results(results: dict[str, dict[str, Any]], classes: tuple[str, ...]) -> dict[str, Any] | None:
    """Split-level IoU from the per-sample counts of :func:`bevforge.eval.runner.run_inference`."""
    from bevforge.eval.map_seg import SegIoU

    acc = SegIoU(classes)
    found = False
    for res in results.values():
        if "seg_intersection" in res:
            acc.intersection += np.asarray(res["seg_intersection"], dtype=np.int64)
            acc.union += np.asarray(res["seg_union"], dtype=np.int64)
            found = True
    return acc.result() if found else None


def score_detection(
    submission: dict[str, Any] | str | Path, gt: GroundTruth, devkit: bool = False, source: str = ""
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Our metrics (and, with ``devkit``, the official code's on the same inputs)."""
    cfg = DetectionEvalConfig()
    ours = evaluate(submission, gt, cfg, source=source)
    theirs = None
    if devkit:
        from bevforge.eval.devkit_bridge import devkit_metrics

        theirs = devkit_metrics(gt, submission, cfg)
    return ours, theirs


def score_results(
    results: dict[str, dict[str, Any]],
    cfg: Config,
    split: str,
    out: str | Path,
    metrics: tuple[str, ...] = ("det",),
    devkit: bool = False,
) -> dict[str, Any]:
    """Inference results -> submission JSON ``out`` + ``metrics_det.json`` / ``metrics_seg.json`` beside it.

    Ground truth: the split's info file (``cfg.data.info_dir``). Returns ``{"det", "devkit", "seg"}``
    (whichever apply).
    """
    from bevforge.data.nuscenes.infos import load_infos
    from bevforge.eval.gt import load_gt_from_infos

    info_path = Path(cfg.data.info_dir) / f"infos_{split}.json"
    samples = load_infos(info_path).samples
    out = Path(out)
    summary: dict[str, Any] = {}
    if "det" in metrics and cfg.model.with_det:
        dets = {t: r for t, r in results.items() if "scores" in r}
        submission = make_submission(dets, samples, tuple(cfg.data.classes))
        write_submission(out, submission)
        gt = load_gt_from_infos(samples, source=str(info_path))
        ours, theirs = score_detection(submission, gt, devkit, source=str(out))
        summary["det"] = ours
        write_metrics(out.parent / "metrics_det.json", ours)
        if theirs is not None:
            summary["devkit"] = theirs
            write_metrics(out.parent / "metrics_det_devkit.json", theirs)
    if "seg" in metrics:
        seg = seg_from_results(results, tuple(cfg.data.seg_classes))
        if seg is not None:
            summary["seg"] = seg
            write_metrics(out.parent / "metrics_seg.json", seg)
    return summary


def evaluate_model(
    model: torch.nn.Module,
    cfg: Config,
    out_dir: str | Path,
    split: str | None = None,
    metrics: tuple[str, ...] = ("det", "seg"),
) -> dict[str, Any]:
    """Periodic evaluation for a trainer: scene-whole inference with ``model`` (unwrapped, on its device),
    scored into ``out_dir`` (``results_nusc.json`` + metrics files). Under an initialised process group every
    rank must call it; rank 0 gets the summary, the others ``{}``."""
    import torch

    from bevforge.data.loader import build_dataloader
    from bevforge.eval.runner import run_inference

    split = split or cfg.data.val_split
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    loader = build_dataloader(cfg, split, train=False, distributed=distributed)
    results = run_inference(model, loader, cfg)
    if distributed and torch.distributed.get_rank() != 0:
        return {}
    return score_results(results, cfg, split, Path(out_dir) / "results_nusc.json", metrics)


def test_checkpoint(
    cfg: Config,
    ckpt_path: str | Path,
    out: str | Path,
    metrics: tuple[str, ...] = ("det",),
    devkit: bool = False,
    show_dir: str | Path | None = None,
    split: str | None = None,
) -> dict[str, Any]:
    """Checkpoint -> submission JSON + metrics files; returns ``{"det": ..., "seg": ..., "devkit": ...}``.

    Works as one process or under ``torchrun`` (gloo on CPU, NCCL on GPUs; rank 0 writes and scores).
    """
    import torch

    from bevforge.data.loader import build_dataloader
    from bevforge.eval.runner import run_inference
    from bevforge.models.build import build_model
    from bevforge.train.distributed import init_distributed
    from bevforge.train.setup import channels_last_, inference_backends

    owns_group = not torch.distributed.is_initialized()
    info = init_distributed()
    split = split or cfg.data.val_split
    try:
        model = build_model(cfg)
        load_checkpoint(model, ckpt_path)
        model.to(info.device)
        if cfg.train.channels_last:  # the backbone + neck layout the recipe trains in, for inference too
            channels_last_(model)
        loader = build_dataloader(cfg, split, train=False, distributed=info.distributed)
        with inference_backends(cfg.train):  # TF32 and cuDNN autotuning as in training
            results = run_inference(model, loader, cfg)
    finally:
        if owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if not info.is_main:
        return {}
    summary = score_results(results, cfg, split, out, metrics, devkit)
    if show_dir and "det" in summary:
        summary["show"] = _show(Path(out), cfg, split, show_dir)
    return summary


def _show(results_path: Path, cfg: Config, split: str, show_dir: str | Path) -> list[str]:
    try:
        from bevforge.viz import render_results
    except ImportError as e:
        print(f"--show-dir: bevforge.viz is not available ({e}); skipped")
        return []
    info_file = Path(cfg.data.info_dir) / f"infos_{split}.json"
    paths = render_results(
        str(results_path), str(info_file), cfg.data.data_root, str(show_dir), max_samples=20
    )
    return [str(p) for p in paths]


def eval_results(
    results_path: str | Path,
    data_root: str | Path | None = None,
    version: str | None = None,
    split: str = "val",
    infos: str | Path | None = None,
    devkit: bool = False,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Score a submission file against the DB (``data_root``/``version``/``split``) or an info file."""
    from bevforge.eval.gt import load_gt_from_db, load_gt_from_infos

    if infos:
        from bevforge.data.nuscenes.infos import load_infos

        gt = load_gt_from_infos(load_infos(infos).samples, source=str(infos))
    else:
        if not data_root or not version:
            raise ValueError("give --data-root and --version (or --infos)")
        gt = load_gt_from_db(data_root, version, split)
    # a path, not a parsed dict: evaluate() then uses the column reader (eval/submission_reader.py)
    return score_detection(Path(results_path), gt, devkit, source=str(results_path))
