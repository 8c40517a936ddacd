"""The console script: help lists every subcommand; unknown subcommands fail; bad input is one error line."""

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


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "data", "bevformer_debug"],
        ["bench", "train", "bevformer_debug", "--iters", "1"],
        ["train", "bevformer_debug", "--work-dir", "{tmp}/work"],
    ],
)
def test_a_missing_info_file_is_one_error_line_with_the_fix(argv, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main([*argv, "--set", f"data.info_dir={tmp_path}/infos"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"{tmp_path}/infos/infos_train.json" in err, err
    assert "bevforge prepare" in err and "Traceback" not in err, err


def test_other_exceptions_keep_their_traceback(monkeypatch):
    import bevforge.cli.config_cmd as config_cmd

    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(config_cmd, "run", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["config", "bevformer_debug"])


def test_the_input_errors_are_one_kind_and_keep_their_old_bases():
    from bevforge.config import ConfigError
    from bevforge.data.depth_targets import LidarFileError
    from bevforge.data.image_io import ImageDecodeError, MissingImageError
    from bevforge.data.nuscenes.convert import InfoConvertError
    from bevforge.data.nuscenes.image_cache import ImageCacheError
    from bevforge.data.nuscenes.infos import InfoFormatError
    from bevforge.data.nuscenes.prepare import DatasetError
    from bevforge.errors import InputError
    from bevforge.eval import pipeline
    from bevforge.eval.gt import GroundTruthError
    from bevforge.eval.nuscenes_det import SubmissionError
    from bevforge.train import checkpoint
    from bevforge.viz.results import VisInputError

    value_errors = [ConfigError, LidarFileError, InfoConvertError, ImageCacheError, InfoFormatError]
    value_errors += [
        DatasetError,
        GroundTruthError,
        SubmissionError,
        VisInputError,
        checkpoint.CheckpointError,
    ]
    for cls in value_errors:
        assert issubclass(cls, InputError) and issubclass(cls, ValueError), cls
    assert issubclass(ImageDecodeError, InputError) and issubclass(ImageDecodeError, OSError)
    assert issubclass(MissingImageError, FileNotFoundError) and issubclass(MissingImageError, InputError)
    assert pipeline.CheckpointError is checkpoint.CheckpointError  # one class for both loaders


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["synth", "--out", "{tmp}/synth", "--scenes", "0"], ["--scenes", ">= 1"]),
        (["synth", "--out", "{tmp}/synth", "--samples-per-scene", "1"], ["--samples-per-scene"]),
        (["convert-infos", "{tmp}/nope.pkl", "--out", "{tmp}/i.json"], ["{tmp}/nope.pkl", "file not found"]),
        (["convert-infos", "{tmp}/nope.pkl", "--out", "{tmp}/i.json", "--image-size", "16"], ["W,H"]),
        (["prepare", "--data-root", "{tmp}", "--out", "{tmp}/infos"], ["{tmp}/v1.0-mini", "--data-root"]),
        (
            ["cache", "bevformer_debug", "--out", "{tmp}/c", "--set", "data.info_dir={tmp}/infos"],
            ["{tmp}/infos/infos_train.json", "bevforge prepare"],
        ),
        (["cache", "bevformer_debug", "--out", "{tmp}/c", "--threads", "-1"], ["--threads"]),
        (["bench", "kernel", "--device", "cuda"], ["CUDA is not available"]),
        (["bench", "infer", "bevformer_debug", "--device", "cuda"], ["CUDA is not available"]),
    ],
)
def test_every_command_reports_bad_input_on_stderr_with_status_2(argv, names, tmp_path, capsys):
    if "cuda" in argv:
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert "error" not in out, out  # stdout stays clean for scripts that parse it
    for name in names:
        assert name.replace("{tmp}", str(tmp_path)) in err, (name, err)
