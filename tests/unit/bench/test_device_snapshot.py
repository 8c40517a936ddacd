"""benchmarks/device_snapshot.sh in its dry run: the wheels it would fetch and the device call it prints
for the prepared GPU check of benchmarks/README.md (the commit filled in, within the tool's 2000
characters)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "benchmarks" / "device_snapshot.sh"

pytestmark = pytest.mark.skipif(
    shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs a git checkout"
)


def _prepared_env() -> str:
    """The environment of the README's next prepared call (the lines before ``benchmarks/gpu_check.sh``)."""
    readme = (REPO / "benchmarks" / "README.md").read_text()
    block = re.search(r"```bash\n(GPU_CHECK_STEPS=[^`]*?)benchmarks/gpu_check\.sh \$OUT\n```", readme)
    assert block, (
        "benchmarks/README.md has no prepared `GPU_CHECK_STEPS=... benchmarks/gpu_check.sh $OUT` call"
    )
    return " ".join(block.group(1).replace("\\\n", " ").split())


def test_the_dry_run_prints_the_prepared_call_with_the_commit(tmp_path):
    env = dict(os.environ, DEVICE_SNAPSHOT_DRY_RUN="1", GPU_ENV=_prepared_env())
    proc = subprocess.run(
        ["bash", str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    lines = proc.stdout.splitlines()
    assert 'carry: [".gpu_snap"]' in lines and "timeout_s: 570" in lines
    command = next(line for line in lines if line.startswith("command ")).split(": ", 1)[1]
    assert len(command) <= 2000, len(command)
    assert f"BEVFORGE_COMMIT={head.stdout.strip()} " in command and _prepared_env() in command
    assert command.startswith("cd .gpu_snap && ") and "bash benchmarks/gpu_check.sh $OUT" in command
    for name in ("nuscenes-devkit==1.2.0", "pyquaternion", "simplejpeg", "orjson", "shapely"):
        wheel = name.split("=")[0].replace("-", "_")
        fetched = any((REPO / ".whl").glob(f"{wheel}-*.whl"))
        assert fetched or any(line.startswith("DOWNLOAD ") and line.endswith(f" {name}") for line in lines), (
            name
        )
    assert (
        not (REPO / ".gpu_snap").exists() or (REPO / ".gpu_snap" / "src").is_dir()
    )  # a dry run writes nothing
