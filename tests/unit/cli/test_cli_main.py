"""The console script: help lists every subcommand; unknown subcommands fail."""

import subprocess
import sys

import pytest

from bevforge.cli.main import SUBCOMMANDS, main


def test_help_lists_subcommands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in out


def test_unknown_subcommand_exits_2():
    with pytest.raises(SystemExit) as e:
        main(["no-such-command"])
    assert e.value.code == 2


def test_console_script_runs():
    r = subprocess.run(
        [sys.executable, "-m", "bevforge.cli.main", "--version"], capture_output=True, text=True
    )
    assert r.returncode == 0 and r.stdout.strip()


@pytest.mark.parametrize("command", ["config", "cache"])
def test_config_errors_exit_2_with_the_fix(command, capsys):
    assert main([command, "bevformer_debug", "--set", "model.bev_hh=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'model.bev_hh'" in err and "Did you mean: model.bev_h" in err
