"""Benchmark results name the bevforge commit that ran, marked dirty when its source was edited."""

import shutil
import subprocess

import pytest

from bevforge import __version__
from bevforge.bench.results import append_result, git_commit

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A git checkout with src/bevforge, configs and a benchmarks results file, all committed."""
    monkeypatch.delenv("BEVFORGE_COMMIT", raising=False)
    repo = tmp_path / "repo"
    for rel in ("src/bevforge/__init__.py", "configs/tiny.py", "benchmarks/results/train.md"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text("x = 1\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    return repo


def test_the_commit_of_the_checkout_and_dirty_only_for_source_edits(checkout):
    pkg = checkout / "src" / "bevforge"
    sha = _git(checkout, "rev-parse", "--short", "HEAD").strip()
    assert git_commit(pkg) == sha
    (checkout / "benchmarks/results/train.md").write_text("appended by a benchmark\n")
    (checkout / "notes.txt").write_text("untracked\n")
    assert git_commit(pkg) == sha  # results and untracked files are not the measured code
    (checkout / "configs/tiny.py").write_text("x = 2\n")
    assert git_commit(pkg) == f"{sha}-dirty"
    _git(checkout, "checkout", "-q", "--", "configs")
    (pkg / "__init__.py").write_text("x = 3\n")
    assert git_commit(pkg) == f"{sha}-dirty"


def test_never_the_commit_of_the_repository_it_was_started_in(checkout, tmp_path, monkeypatch):
    # an installed package inside some other repository (a venv in a checkout): not that repo's commit
    installed = checkout / "venv" / "site-packages" / "bevforge"
    installed.mkdir(parents=True)
    monkeypatch.chdir(checkout)
    assert git_commit(installed) == f"bevforge {__version__}"
    outside = tmp_path / "no_repo" / "bevforge"
    outside.mkdir(parents=True)
    assert git_commit(outside) == f"bevforge {__version__}"


def test_the_environment_commit_wins_and_lands_in_the_results_file(checkout, tmp_path, monkeypatch):
    monkeypatch.setenv("BEVFORGE_COMMIT", "abc1234")
    assert git_commit(checkout / "src" / "bevforge") == "abc1234"
    out = append_result(tmp_path / "results" / "train.md", "train demo", "cpu", "| a |\n")
    text = out.read_text()
    assert text.startswith("# train benchmarks\n") and "- commit: abc1234\n" in text and "| a |" in text
    append_result(out, "train again", "cpu", "| b |\n")
    assert out.read_text().count("## train") == 2  # appended, the first section kept
