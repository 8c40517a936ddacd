"""benchmarks/op_census.py and benchmarks/memory_census.py run on the debug recipe and see what they
claim to see (each in its own process: the memory census re-routes the MSDA dispatch for its run)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def _run(script: str, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, str(REPO / "benchmarks" / script), "configs/bevformer_debug.py", *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _parts(out: str) -> dict[str, float]:
    line = next(ln for ln in out.splitlines() if ln.startswith("by part: "))
    return {name: float(gib) for name, gib in re.findall(r"(\w+) ([\d.]+) GiB", line)}


def test_memory_census_sees_checkpointing():
    args = ("--top", "3", "--set", "data.img_scale=0.2")
    plain = _parts(_run("memory_census.py", *args))
    ckpt = _parts(_run("memory_census.py", *args, "train.grad_ckpt=true"))
    assert set(plain) >= {"backbone", "encoder", "det_head"}, plain
    assert plain["backbone"] > 0 and plain["encoder"] > 0
    # --grad-ckpt: the encoder's layers and the backbone's trainable blocks keep (almost) nothing
    assert ckpt.get("encoder", 0.0) < 0.5 * plain["encoder"], (plain, ckpt)
    assert ckpt.get("backbone", 0.0) < 0.5 * plain["backbone"], (plain, ckpt)
    assert ckpt["det_head"] == plain["det_head"]


def test_op_census_counts_autocast_casts():
    def total(out: str) -> tuple[int, int]:
        first = out.splitlines()[0]  # "... one training step optimizer N, forward N, backward N"
        phases = {k: int(v) for k, v in re.findall(r"(forward|backward) (\d+)", first)}
        assert set(phases) == {"forward", "backward"}, first
        return phases["forward"] + phases["backward"], out.count("_to_copy")

    (with_amp, casts_amp), (without, _) = (
        total(_run("op_census.py", "--top", "60")),
        total(_run("op_census.py", "--top", "60", "--amp", "off")),
    )
    assert with_amp > without > 0 and casts_amp >= 1, (with_amp, without)


def test_op_census_takes_the_cuda_kernel_paths():
    """--paths cuda (default): the MSDA and DCN custom ops count as one operator each (the SCA's recompute
    regions active, so the MSDA forward is kept, not counted again); --paths cpu counts the references."""

    def counts(out: str) -> tuple[int, dict[str, int]]:
        first = out.splitlines()[0]
        phases = {k: int(v) for k, v in re.findall(r"(forward|backward) (\d+)", first)}
        ops = dict((name, int(n)) for n, name in re.findall(r"^\s+(\d+)  (\w+)$", out, re.M))
        return phases["forward"] + phases["backward"], ops

    dcn = "model.backbone.dcn_stages=[false,false,true,false]"  # the debug recipe has none (C3, C4 out)
    args = ("--top", "200", "--set", "data.img_scale=0.2", dcn)
    cuda_total, cuda_ops = counts(_run("op_census.py", *args))
    cpu_total, cpu_ops = counts(_run("op_census.py", *args, "--paths", "cpu"))
    # debug recipe: a TSA and an SCA in its one encoder layer (the TSA's sampling points as offsets around
    # fixed reference points: the offsets op; the SCA one op over the cameras), an MSDA per decoder layer
    # (its reference points train: locations)
    assert cuda_ops.get("msda_offsets", 0) >= 1 and cuda_ops.get("msda_offsets_backward", 0) >= 1, cuda_ops
    assert cuda_ops.get("msda_cameras", 0) >= 1 and cuda_ops.get("msda_cameras_backward", 0) >= 1, cuda_ops
    assert cuda_ops.get("msda", 0) >= 2 and cuda_ops.get("msda_backward", 0) >= 1, cuda_ops
    assert cuda_ops.get("dcn_columns", 0) >= 1 and cuda_ops.get("dcn_backward", 0) >= 1, cuda_ops
    assert not {"msda", "msda_offsets", "msda_cameras", "dcn_columns"} & set(cpu_ops), cpu_ops
    assert cuda_total < cpu_total, (cuda_total, cpu_total)


def test_op_census_sees_layout_switches_and_the_dcn_keeps_channels_last():
    """train.channels_last=true with a DCN stage (CUDA paths: the DCN's pixel-major columns): the only layout
    switches of a step are the images' conversion in the backbone's pre-hook (history and current frame);
    the DCN layers write and take channels-last tensors, forward and backward."""
    dcn = "model.backbone.dcn_stages=[false,false,true,false]"
    out = _run("op_census.py", "--top", "20", "--set", "data.img_scale=0.2", dcn, "train.channels_last=true")
    header = next(ln for ln in out.splitlines() if ln.startswith("layout switches"))
    lines = out.split(header, 1)[1].split("\n\n", 1)[0].strip().splitlines()
    assert header.endswith(" 2 in all:") and len(lines) == 1, out
    assert "train/setup.py" in lines[0] and "forward" in lines[0], lines


def test_strided_pointwise_detects_what_cuda_runs_with_its_generic_kernel():
    """The op census's strided-pointwise check: a broadcast operand or an operand in another layout than the
    output makes CUDA's TensorIterator take its generic strided kernel; equal dense layouts (NCHW or
    channels-last) and scalar / one-element operands do not."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from op_census import _strided_pointwise
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    import torch

    x = torch.randn(2, 3, 4, 5)
    cl = x.contiguous(memory_format=torch.channels_last)
    assert _strided_pointwise((x, x), x + x) == 0
    assert _strided_pointwise((cl, cl), cl + cl) == 0
    assert _strided_pointwise((x, torch.tensor(2.0)), x * 2) == 0  # a 0-d operand is a scalar
    scale = torch.randn(1, 3, 1, 1)
    assert _strided_pointwise((x, scale), x * scale) == x.numel()  # broadcast
    assert _strided_pointwise((x, cl), x + cl) == x.numel()  # mixed layouts
    t = x.transpose(2, 3)
    assert _strided_pointwise((t, t), t + t) == 0  # a permuted dense view: still one flat range
    s = x[..., ::2]
    assert _strided_pointwise((s, s), s + s) == s.numel()  # a strided slice: not dense
    one = torch.randn(1, 4, 5)
    size_one = torch.randn(1, 4, 5).as_strided((1, 4, 5), (0, 5, 1))  # a size-1 dim's stride is never used
    assert _strided_pointwise((one, size_one), one + size_one) == 0
