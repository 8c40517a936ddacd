"""`bevforge eval` only scores a file: its modules must not pull in torch (~1.5 s of imports per call)."""

from __future__ import annotations

import subprocess
import sys

import torch


def test_scoring_modules_do_not_import_torch():
    torch.manual_seed(0)
    code = (
        "import sys\n"
        "import bevforge.cli.eval, bevforge.eval.pipeline, bevforge.eval.gt, bevforge.eval.report\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout[:300]
