"""Recipe checks: the config loads, the data root, the info files, the checkpoints it names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bevforge.doctor.report import FAIL, OK, WARN, Check, DoctorReport


def _check_config(report: DoctorReport, config: str, overrides: list[str] | None = None) -> None:
    from bevforge.config import ConfigError, load_config

    try:
        cfg = load_config(config, overrides)
    except ConfigError as e:
        report.checks.append(Check("config", FAIL, str(e), "pass a recipe name (see configs/) or a path"))
        return
    except Exception as e:  # the recipe file itself raised
        report.checks.append(
            Check(
                "config", FAIL, f"{config}: {type(e).__name__}: {e}", "fix the recipe file so config() runs"
            )
        )
        return
    report.checks.append(Check("config", OK, f"{config} ({cfg.name})"))

    root = Path(cfg.data.data_root)
    if root.is_dir():
        tables = root / cfg.data.version / "sample.json"
        ok = tables.is_file()
        report.checks.append(
            Check(
                "data root",
                OK if ok else WARN,
                f"{root.resolve()}" + ("" if ok else f" has no {cfg.data.version}/sample.json"),
                ""
                if ok
                else f"set data.version to the folder of nuScenes tables under {root} "
                "(needed by prepare and evaluation against the DB)",
            )
        )
    else:
        report.checks.append(
            Check(
                "data root",
                FAIL,
                f"data root {root} does not exist (cwd {Path.cwd()})",
                f"put the nuScenes-format dataset at {root}, or point to it with "
                "--set data.data_root=/path/to/nuscenes; "
                f"for a synthetic set run `bevforge synth --out {root}`",
            )
        )

    _check_infos(report, cfg)
    _check_loader(report, cfg)

    if cfg.load_from:
        p = Path(cfg.load_from)
        ok = p.is_file()
        report.checks.append(
            Check(
                "load_from",
                OK if ok else FAIL,
                f"{p} {'exists' if ok else 'does not exist'}",
                ""
                if ok
                else "download/convert the checkpoint there, or --set load_from= to start from scratch",
            )
        )

    pre = cfg.model.backbone.pretrained
    if pre == "torchvision":
        ckpt_dir = Path(torch.hub.get_dir()) / "checkpoints"
        found = sorted(ckpt_dir.glob(f"resnet{cfg.model.backbone.depth}-*.pth"))
        report.checks.append(
            Check(
                "backbone pretrained",
                OK if found else WARN,
                str(found[0]) if found else f"no resnet{cfg.model.backbone.depth}-*.pth in {ckpt_dir}",
                ""
                if found
                else f"place the torchvision ResNet-{cfg.model.backbone.depth} weights in {ckpt_dir}",
            )
        )
    elif pre:
        p = Path(pre)
        ok = p.is_file()
        report.checks.append(
            Check(
                "backbone pretrained",
                OK if ok else FAIL,
                f"{p} {'exists' if ok else 'does not exist'}",
                ""
                if ok
                else "put the backbone state dict there, or --set model.backbone.pretrained= (random)",
            )
        )


def loader_advice(cores: int, gpus: int, workers: int, threads: int) -> str | None:
    """Advice when a training process's image decoding (``data.num_workers`` workers, each decoding on
    ``data.decode_threads`` threads) would leave most of its share of the CPU cores idle, or oversubscribe
    them; ``None`` when it fits."""
    per_process = max(1, cores // max(1, gpus))
    decoders = max(1, workers) * max(1, threads)
    if per_process >= 4 and 2 * decoders <= per_process:
        suggest = max(2, per_process // max(1, workers))
        return (
            f"{per_process} cores per training process but its loader decodes {decoders} image(s) at once: "
            f"set data.decode_threads={suggest} (threads per worker) or raise data.num_workers, so the data "
            "share of a step stays small"
        )
    if decoders > 2 * per_process:
        return (
            f"{decoders} images decoded at once per training process on {per_process} core(s): lower "
            "data.num_workers or data.decode_threads (threads beyond the cores only add switching)"
        )
    return None


def _check_loader(report: DoctorReport, cfg: Any) -> None:
    """The loader's decoding parallelism against this machine's cores and GPUs."""
    from bevforge.data.nuscenes.decode_pool import usable_cores

    cores = usable_cores()
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 1
    d = cfg.data
    advice = loader_advice(cores, gpus, d.num_workers, d.decode_threads)
    threads = max(1, d.decode_threads)
    detail = f"{d.num_workers} worker(s) x {threads} decode thread(s), {cores} cores, {gpus} process(es)"
    report.checks.append(Check("data loader", WARN if advice else OK, detail, advice or ""))


def _check_infos(report: DoctorReport, cfg: Any) -> None:
    """Each split's info file exists, loads (format, version) and its first sample's images exist."""
    fix = (
        f"run `bevforge prepare --data-root {cfg.data.data_root} --version {cfg.data.version} "
        f"--out {cfg.data.info_dir}`"
    )
    for split in dict.fromkeys((cfg.data.train_split, cfg.data.val_split)):
        info = Path(cfg.data.info_dir) / f"infos_{split}.json"
        name = f"infos {split}"
        if not info.is_file():
            report.checks.append(Check(name, FAIL, f"infos missing: {info}", fix))
            continue
        try:
            from bevforge.data.nuscenes.infos import load_infos

            samples = load_infos(info, expect_version=cfg.data.version).samples
        except ImportError:  # pragma: no cover - part of bevforge
            report.checks.append(Check(name, OK, f"{info} exists (not validated)"))
            continue
        except ValueError as e:  # InfoFormatError: names the file and the fix
            report.checks.append(Check(name, FAIL, str(e), fix))
            continue
        report.checks.append(Check(name, OK, f"{info} ({len(samples)} samples)"))
        if samples:
            missing = [
                c["path"]
                for c in samples[0]["cams"].values()
                if not (Path(cfg.data.data_root) / c["path"]).is_file()
            ]
            if missing:
                cached = bool(cfg.data.image_cache)  # the loader reads the cache, raw images are optional
                report.checks.append(
                    Check(
                        f"images {split}",
                        WARN if cached else FAIL,
                        f"{len(missing)} camera image(s) of the first sample missing under "
                        f"{cfg.data.data_root}, e.g. {missing[0]}",
                        "data.data_root must be the folder the infos were prepared from (or re-run prepare)",
                    )
                )
