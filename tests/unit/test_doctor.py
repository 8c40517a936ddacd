"""bevforge.doctor: checks, statuses and fixes (CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bevforge import doctor
from bevforge.structures.boxes import BOX_CONVENTION


def _recipe(tmp_path: Path, data_root: Path, info_dir: Path, load_from: str = "") -> Path:
    path = tmp_path / "recipe_doctor.py"
    path.write_text(
        "from bevforge.config import Config\n\n\n"
        "def config() -> Config:\n"
        "    cfg = Config(name='doctor_test')\n"
        f"    cfg.data.data_root = {str(data_root)!r}\n"
        f"    cfg.data.info_dir = {str(info_dir)!r}\n"
        f"    cfg.load_from = {load_from!r}\n"
        "    return cfg\n"
    )
    return path


def test_doctor_cpu_report_is_usable_and_has_versions() -> None:
    report = doctor.run_checks(nccl=False)
    d = report.to_dict()
    assert set(d) >= {"usable", "cpu_only", "summary", "versions", "driver", "gpus", "checks"}
    assert d["versions"]["torch"] == torch.__version__
    assert {"cuda", "cudnn", "nccl", "triton", "python"} <= set(d["versions"])
    names = [c["name"] for c in d["checks"]]
    assert "matmul cpu" in names and "nuscenes-devkit" in names
    assert all(c["status"] in ("ok", "warn", "fail") for c in d["checks"])
    if not torch.cuda.is_available():
        assert d["cpu_only"] and d["gpus"] == []
        assert "CPU only" in d["summary"]
        assert report.exit_code() == 0


def test_doctor_missing_data_root_fails_with_fix(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_data"
    recipe = _recipe(tmp_path, missing, missing / "infos", load_from=str(tmp_path / "nope.pth"))
    report = doctor.run_checks(config=str(recipe), nccl=False)
    by_name = {c.name: c for c in report.checks}
    assert by_name["data root"].status == "fail"
    assert str(missing) in by_name["data root"].detail and "data.data_root" in by_name["data root"].fix
    assert by_name["infos train"].status == "fail"
    assert "bevforge prepare" in by_name["infos train"].fix
    assert by_name["load_from"].status == "fail"
    assert not report.usable and report.exit_code() == 1


def test_doctor_present_data_passes(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "infos").mkdir(parents=True)
    (root / "v1.0-mini").mkdir()
    (root / "v1.0-mini" / "sample.json").write_text("[]")
    header = {"format": "bevforge-infos", "format_version": 1, "box_convention": BOX_CONVENTION,
              "nuscenes_version": "v1.0-mini", "split": "train", "num_samples": 0, "samples": []}  # fmt: skip
    (root / "infos" / "infos_train.json").write_text(json.dumps(header))
    (root / "infos" / "infos_val.json").write_text('{"format": "something else"}')
    report = doctor.run_checks(config=str(_recipe(tmp_path, root, root / "infos")), nccl=False)
    by_name = {c.name: c for c in report.checks}
    assert by_name["data root"].status == "ok"
    assert by_name["infos train"].status == "ok" and "0 samples" in by_name["infos train"].detail
    # a file of another format names the file and the fix
    assert by_name["infos val"].status == "fail" and "infos_val.json" in by_name["infos val"].detail
    assert "bevforge prepare" in by_name["infos val"].fix
    assert report.exit_code() == 1
    (root / "infos" / "infos_val.json").write_text(json.dumps(header))
    report = doctor.run_checks(config=str(_recipe(tmp_path, root, root / "infos")), nccl=False)
    by_name = {c.name: c for c in report.checks}
    assert "load_from" not in by_name  # empty load_from is not checked
    assert report.usable


def test_doctor_unknown_recipe_fails() -> None:
    report = doctor.run_checks(config="no_such_recipe_xyz", nccl=False)
    check = next(c for c in report.checks if c.name == "config")
    assert check.status == "fail" and "no_such_recipe_xyz" in check.detail


def test_doctor_matmul_smoke_cpu() -> None:
    torch.manual_seed(0)
    assert doctor.matmul_smoke("cpu", size=16) < 1e-5


def test_doctor_allreduce_smoke_gloo() -> None:
    # The same spawn + all_reduce path the NCCL check uses, on CPU with gloo.
    doctor.allreduce_smoke("gloo", world_size=2, timeout_s=60)


def test_doctor_allreduce_smoke_reports_failure() -> None:
    with pytest.raises(Exception, match="(?i)backend|invalid|unknown|error"):
        doctor.allreduce_smoke("no_such_backend", world_size=1, timeout_s=20)


def test_cpu_thread_advice_only_when_oversubscribed(monkeypatch) -> None:
    from bevforge.doctor.env import cpu_thread_advice

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    advice = cpu_thread_advice(load=3.0, threads=2, cores=2)
    assert advice is not None and "OMP_NUM_THREADS=1" in advice and "2 core(s)" in advice
    assert cpu_thread_advice(load=0.1, threads=2, cores=2) is None  # idle machine
    assert cpu_thread_advice(load=9.0, threads=1, cores=2) is None  # one thread cannot spin-wait
    assert cpu_thread_advice(load=20.0, threads=16, cores=64) is None  # big machine, room left
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert cpu_thread_advice(load=3.0, threads=2, cores=2) is None  # the user chose


def test_loader_advice_for_idle_or_oversubscribed_cores() -> None:
    from bevforge.doctor.data import loader_advice

    advice = loader_advice(cores=16, gpus=1, workers=4, threads=0)
    assert advice is not None and "data.decode_threads=4" in advice  # a GPU node, the recipe's 4 workers
    assert loader_advice(cores=16, gpus=1, workers=4, threads=3) is None
    assert loader_advice(cores=128, gpus=8, workers=4, threads=0) is not None  # 16 cores per process
    assert loader_advice(cores=2, gpus=1, workers=2, threads=0) is None  # this CI machine
    over = loader_advice(cores=2, gpus=1, workers=4, threads=4)
    assert over is not None and "lower data.num_workers" in over
