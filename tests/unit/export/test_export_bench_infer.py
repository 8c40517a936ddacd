"""`bevforge bench infer` on the debug recipe (CPU, eager modes, one frame): a table with provenance."""

from __future__ import annotations

import argparse

import pytest
import torch

from bevforge.bench import infer


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    infer.add_arguments(parser)
    return parser.parse_args(argv)


def test_bench_infer_debug_eager(tmp_path):
    torch.manual_seed(0)
    out = tmp_path / "infer.md"
    argv = ["configs/bevformer_debug.py", "--modes", "eager,eager-ref", "--iters", "1", "--warmup", "0"]
    args = _args([*argv, "--device", "cpu", "--out", str(out)])
    assert infer.run(args) == 0
    text = out.read_text()
    assert "## inference bevformer_debug" in text and "- commit: " in text
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| eager")}
    assert set(rows) == {"eager", "eager-ref"}
    assert all("skipped" not in r for r in rows.values()), rows
    assert float(rows["eager"].split("|")[2]) > 0  # p50 ms


def test_bench_infer_rejects_unknown_mode(tmp_path, capsys):
    args = _args(["configs/bevformer_debug.py", "--modes", "tensorrt", "--device", "cpu"])
    assert infer.run(args) == 2
    assert "tensorrt" in capsys.readouterr().err


def test_bench_infer_channels_last(tmp_path):
    torch.manual_seed(0)
    out = tmp_path / "infer.md"
    argv = [
        "configs/bevformer_debug.py",
        "--modes",
        "eager",
        "--iters",
        "1",
        "--warmup",
        "0",
        "--channels-last",
    ]
    assert infer.run(_args([*argv, "--device", "cpu", "--out", str(out)])) == 0
    text = out.read_text()
    assert "channels-last backbone + neck" in text and "skipped" not in text


def test_bench_infer_cuda_graph_mode_needs_cuda(tmp_path):
    """On the CPU the mode is reported as skipped with the reason; the other modes still run."""
    out = tmp_path / "infer.md"
    argv = ["configs/bevformer_debug.py", "--modes", "eager,cuda-graph", "--iters", "1", "--warmup", "0"]
    assert infer.run(_args([*argv, "--device", "cpu", "--out", str(out)])) == 0
    lines = out.read_text().splitlines()
    rows = {line.split("|")[1].strip(): line for line in lines if line.startswith("| ")}
    assert "skipped" not in rows["eager"]
    assert "skipped: RuntimeError: cuda-graph needs a CUDA device" in rows["cuda-graph"]


def test_bench_infer_eval_modes(tmp_path):
    """``eval`` times the model's own forward with the state carried; ``eval-graph`` needs CUDA; neither
    leaves a graph holder on the model."""
    from bevforge.config import load_config
    from bevforge.models.build import build_model

    out = tmp_path / "infer.md"
    argv = ["configs/bevformer_debug.py", "--modes", "eval,eval-graph", "--iters", "2", "--warmup", "1"]
    assert infer.run(_args([*argv, "--device", "cpu", "--out", str(out)])) == 0
    rows = {
        line.split("|")[1].strip(): line for line in out.read_text().splitlines() if line.startswith("| ")
    }
    assert "skipped" not in rows["eval"] and float(rows["eval"].split("|")[2]) > 0
    assert "skipped: RuntimeError: eval-graph needs a CUDA device" in rows["eval-graph"]
    cfg = load_config("bevformer_debug")
    model = build_model(cfg).eval()
    _, inputs = infer.frame_and_inputs(cfg, model, None)
    step = infer._eval_fn(model, inputs, None, "cpu", graph=False)
    first, second = step(), step()  # the second frame has the first's BEV
    assert not torch.equal(first["bev"], second["bev"]) and model.infer_graph is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_replay_matches_eager():
    """The captured frame (SCA on its static path under capture) gives the eager frame's outputs, and a
    replay after new inputs are copied in follows them."""
    from bevforge.config import load_config
    from bevforge.models.build import build_model

    torch.manual_seed(0)
    cfg = load_config("bevformer_debug")
    model = build_model(cfg).eval().cuda()
    frame, inputs = infer.frame_and_inputs(cfg, model, None)
    inputs = tuple(t.cuda() for t in inputs)
    eager = infer._torch_fn(frame, inputs, None, "cuda")
    replay = infer._graph_fn(frame, inputs, None, "cuda")
    for a, b in zip(replay(), eager(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    new_images = torch.rand_like(inputs[0])
    inputs[0].copy_(new_images)  # the step copies the caller's tensors in on every replay
    for a, b in zip(replay(), eager(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
