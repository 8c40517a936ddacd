"""benchmarks/gpu_check.sh without a GPU: every step's command line parses and names what exists.

A device call is minutes of a 15-minute budget: a renamed flag, a removed config key, a moved test file or a
step name mistyped in benchmarks/README.md's prepared call must fail here, not there. The script's dry run
(``GPU_CHECK_DRY_RUN=1``) prints each step's command as if CUDA and every import were there; each is parsed
by the parser of the program it runs (stopped right after parsing), with its ``--set`` overrides applied to
its recipe.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from bevforge.config import load_config

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def _dry_run(tmp_path: Path, **env: str) -> list[list[str]]:
    """The steps' ``[name, program, args...]`` of a dry run."""
    run_env = {k: v for k, v in os.environ.items() if not k.startswith(("GPU_CHECK_", "STEP_TIMEOUT"))}
    run_env.update(GPU_CHECK_DRY_RUN="1", PYTHON="python3", **env)
    proc = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path)],
        cwd=REPO,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [shlex.split(line)[1:] for line in proc.stdout.splitlines() if line.startswith("STEP ")]


class _Parsed(Exception):
    def __init__(self, namespace: argparse.Namespace) -> None:
        self.namespace = namespace


@contextlib.contextmanager
def _stop_after_parsing():
    """``ArgumentParser.parse_args`` raises :class:`_Parsed` with its result instead of returning."""
    original = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    argparse.ArgumentParser.parse_args = parse_and_stop
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args = original


def _script_main(path: Path):
    spec = importlib.util.spec_from_file_location(f"_gpu_check_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _parse(name: str, argv: list[str]) -> argparse.Namespace:
    """The namespace ``argv`` (after the interpreter) parses to, by the program's own parser."""
    if argv[:2] == ["-m", "bevforge.cli.main"]:
        from bevforge.cli.main import main as entry

        args = argv[2:]
    elif argv[:2] == ["-m", "bevforge.ops.dcn.bench"]:
        from bevforge.ops.dcn.bench import main as entry

        args = argv[2:]
    else:
        assert argv[0].endswith(".py") and (REPO / argv[0]).is_file(), f"{name}: no script {argv[0]}"
        entry, args = _script_main(REPO / argv[0]), argv[1:]
    err = io.StringIO()
    with _stop_after_parsing(), contextlib.redirect_stderr(err):
        try:
            entry(args)
        except _Parsed as parsed:
            return parsed.namespace
        except SystemExit as e:
            pytest.fail(f"{name}: {shlex.join(argv)} does not parse (exit {e.code}): {err.getvalue()[-800:]}")
    pytest.fail(f"{name}: {shlex.join(argv)} returned without parsing its arguments")


def _check_pytest_targets(name: str, argv: list[str]) -> None:
    targets = [a for i, a in enumerate(argv) if not a.startswith("-") and argv[i - 1] not in ("-p", "-m")]
    assert targets, f"{name}: no test paths"
    for target in targets:
        path, _, test = target.partition("::")
        assert (REPO / path).exists(), f"{name}: {path} does not exist"
        if test:
            source = (REPO / path).read_text()
            assert re.search(rf"^def {re.escape(test)}\(", source, re.M), f"{name}: no test {target}"


def test_every_step_parses_and_its_recipe_takes_its_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    steps = _dry_run(tmp_path)
    names = [s[0] for s in steps]
    assert len(names) == len(set(names)), "step names repeat"
    assert {"kernel-tests-cuda", "model-tests-cuda", "bench-train-base-bf16-graphs"} <= set(names)
    for name, program, *argv in steps:
        assert program == "python3", (name, program)
        if argv[0] == "-c":  # the env step
            continue
        if argv[:2] == ["-m", "pytest"]:
            _check_pytest_targets(name, argv[2:])
            continue
        namespace = _parse(name, argv)
        config, overrides = getattr(namespace, "config", None), getattr(namespace, "overrides", None)
        if config is not None and overrides is not None:
            load_config(config, overrides)  # ConfigError names the key (and its likely spelling)


def test_the_readme_calls_name_groups_and_steps_that_exist(tmp_path):
    """The prepared calls of benchmarks/README.md: their GPU_CHECK_STEPS groups and GPU_CHECK_SKIP steps."""
    groups = re.search(r'STEPS=",\$\{GPU_CHECK_STEPS:-([\w,-]+)\}', SCRIPT.read_text()).group(1).split(",")
    names = {s[0] for s in _dry_run(tmp_path)}
    readme = (REPO / "benchmarks" / "README.md").read_text()
    skips = re.findall(r"GPU_CHECK_SKIP=([\w,-]+)", readme)
    steps = re.findall(r"GPU_CHECK_STEPS=([\w,-]+)", readme)
    assert skips and steps
    for value in steps:
        unknown = set(value.split(",")) - set(groups) - {""}
        assert not unknown, f"GPU_CHECK_STEPS={value}: no group {sorted(unknown)} (groups: {groups})"
    for value in skips:
        unknown = {n for n in value.split(",") if n and n != "name"} - names
        assert not unknown, f"GPU_CHECK_SKIP={value}: no step {sorted(unknown)}"


def test_a_dry_run_keeps_to_the_groups_and_skips_it_is_given(tmp_path):
    steps = _dry_run(tmp_path, GPU_CHECK_STEPS="sca", GPU_CHECK_SKIP="bench-sca-tiny")
    assert [s[0] for s in steps] == ["env", "bench-sca-base"], steps
