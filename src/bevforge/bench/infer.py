"""`bevforge bench infer CONFIG [--ckpt CKPT]`: per-frame inference latency, FPS and peak memory.

One frame of batch 1 (no post-processing) through, for BEVFormer, :class:`bevforge.export.onnx_model.
BEVFormerFrame` (backbone, encoder with the previous BEV, heads) and, for BEVDet (``model.arch =
"bevdet"``), :class:`bevforge.export.bevdet_onnx.BEVDetEager` (the model's own forward: backbone, LSS,
BEV pooling, BEV encoder, CenterPoint head; the pooling plan is cached after the first frame since the
rig is fixed, as in deployment), in up to seven modes:

- ``eager``: PyTorch eager, MSDA / BEV pooling through the dispatch (Triton on CUDA when eligible);
- ``eager-ref``: the same with ``BEVFORGE_KERNELS=reference`` (grid_sample MSDA, scatter_add BEV pool);
- ``compile``: ``torch.compile`` of the frame (inductor);
- ``cuda-graph``: the eager frame captured once as a CUDA graph and replayed (each frame copies its inputs
  into the captured buffers): no per-kernel launch cost, which dominates small batches (the spatial
  cross-attention gathers a static number of hit queries under capture, learnt in the eager warm-up: no
  host read; the note says if a frame hit more). CUDA only;
- ``onnxruntime``: the ONNX export run by onnxruntime (CUDA provider when present, else CPU); BEVDet's
  graph has the rig's pooling plan baked in (:mod:`bevforge.export.bevdet_onnx`).
- ``eval`` / ``eval-graph`` (BEVFormer): the model's own inference forward on a one-frame batch with the
  temporal state carried, i.e. what ``bevforge test`` runs per frame (the host's temporal bookkeeping
  included; loading and decoding not), eagerly and with ``eval.cuda_graph`` (:mod:`bevforge.models.
  infer_graph`: the frame replayed as a CUDA graph, CUDA only).

The recipe's kernel choices apply as ``bevforge test`` makes them (``train.setup.inference_backends``):
TF32 as ``train.tf32``, cuDNN's autotuned convolution algorithms unless ``train.deterministic`` (rows
before the eleventh session ran with PyTorch's default, cuDNN's heuristic pick).

``--channels-last`` puts backbone + neck (and the images) in channels-last format for every mode, as a
recipe with ``train.channels_last`` does (``--set train.channels_last=false`` times it in NCHW).

Latency percentiles (p50/p90/p99 ms) over ``--iters`` timed frames after ``--warmup``; FPS = 1000 / mean;
peak memory = ``torch.cuda.max_memory_allocated`` during the timed frames (CUDA, PyTorch modes only).
A mode that cannot run (no onnxruntime, no compiler) is reported with the reason, the others still run.
Appended to ``benchmarks/results/infer.md`` with device, commit and command.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch

from bevforge.bench.results import append_result
from bevforge.ops.dispatch import kernels

MODES = ("eager", "eager-ref", "compile", "cuda-graph", "onnxruntime", "eval", "eval-graph")
AMP = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="recipe name (bevformer_tiny) or path (configs/bevformer_tiny.py)")
    p.add_argument(
        "--ckpt", default=None, help="checkpoint written by `bevforge train` (default: random init)"
    )
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    p.add_argument("--iters", type=int, default=30, help="timed frames per mode")
    p.add_argument("--warmup", type=int, default=5, help="untimed frames first (compile, autotune)")
    p.add_argument("--amp", choices=list(AMP), default="none", help="autocast dtype for the PyTorch modes")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--raw-wh", type=int, nargs=2, default=None, metavar=("W", "H"), help="camera image size")
    p.add_argument("--out", default="benchmarks/results/infer.md", help="markdown file to append to")
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--channels-last", action="store_true", help="backbone + neck in channels-last format (every mode)"
    )
    p.add_argument(
        "--dynamic-rig",
        action="store_true",
        help="BEVDet onnxruntime mode: the graph that takes lidar2img (geometry + scatter_add pooling in "
        "the graph) instead of the one with the rig's pooling plan baked in",
    )


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_frames(fn: Callable[[], object], warmup: int, iters: int, device: str) -> dict[str, float | None]:
    """Latency percentiles (ms), FPS and peak CUDA memory (MiB) of ``fn``."""
    for _ in range(warmup):
        fn()
    _sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    arr = np.asarray(times)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    return {
        "p50": float(np.percentile(arr, 50)),
        "p90": float(np.percentile(arr, 90)),
        "p99": float(np.percentile(arr, 99)),
        "fps": float(1e3 / arr.mean()),
        "peak_mib": peak,
    }


def _torch_fn(
    frame, inputs, amp: torch.dtype | None, device: str, amp_cache: bool = True
) -> Callable[[], object]:
    """One frame under no_grad and autocast (``amp_cache=False`` for CUDA-graph capture: autocast's cast
    cache must not outlive the captured region)."""

    def step():
        with (
            torch.no_grad(),
            torch.autocast(
                device.split(":")[0],
                dtype=amp or torch.float32,
                enabled=amp is not None,
                cache_enabled=amp_cache,
            ),
        ):
            return frame(*inputs)

    return step


def _graph_fn(frame, inputs, amp: torch.dtype | None, device: str, warmup: int = 3) -> Callable[[], object]:
    """``frame(*inputs)`` captured as one CUDA graph; the returned step copies ``inputs`` into the
    captured buffers and replays it (what a deployment feeding new images each frame would do)."""
    if not device.startswith("cuda"):
        raise RuntimeError("cuda-graph needs a CUDA device (--device cuda)")
    static = tuple(t.clone() for t in inputs)
    step = _torch_fn(frame, static, amp, device, amp_cache=False)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture stream (Triton compiles, cuBLAS handles)
        for _ in range(warmup):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()

    def replay():
        for buf, t in zip(static, inputs, strict=True):
            buf.copy_(t, non_blocking=True)
        graph.replay()
        return out

    return replay


def _eval_fn(model, inputs, amp: torch.dtype | None, device: str, graph: bool) -> Callable[[], object]:
    """``model(batch, state)`` on a one-frame batch made of ``inputs`` (:func:`example_inputs`), the state
    carried from frame to frame (one scene: every frame after the first has a previous BEV); ``graph``
    attaches an :class:`InferenceGraph` (the caller detaches it: ``model.infer_graph = None``)."""
    from bevforge.export.bevdet_onnx import single_frame_batch
    from bevforge.models.infer_graph import InferenceGraph

    if graph and not device.startswith("cuda"):
        raise RuntimeError("eval-graph needs a CUDA device (--device cuda)")
    images, _, _, can_bus, lidar2img = inputs  # [1, N, 3, H, W], [1, 18], [1, N, 4, 4]
    batch = single_frame_batch(images, lidar2img, can_bus)  # absolute can_bus: the same pose each frame
    model.infer_graph = InferenceGraph() if graph else None
    state: list = [None]

    def step():
        with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=amp or torch.float32,
                                                    enabled=amp is not None):  # fmt: skip
            preds, state[0] = model(batch, state[0])
        return preds

    return step


def _ort_fn(
    model, inputs_cpu, tmpdir: str, arch: str = "bevformer", dynamic_rig: bool = False
) -> tuple[Callable[[], object], str]:
    """An onnxruntime session on the exported graph; returns (run one frame, provider used)."""
    import onnxruntime as ort

    path = os.path.join(tmpdir, "frame.onnx")
    if arch == "bevdet":
        from bevforge.export.bevdet_onnx import DYNAMIC_INPUT_NAMES, export_bevdet_onnx

        images, lidar2img = inputs_cpu
        path = export_bevdet_onnx(model.cpu(), lidar2img, images, path, dynamic=dynamic_rig)
        names = DYNAMIC_INPUT_NAMES if dynamic_rig else DYNAMIC_INPUT_NAMES[:1]
        inputs_cpu = inputs_cpu if dynamic_rig else (images,)  # or the rig is baked into the graph
    else:
        from bevforge.export.onnx_model import INPUT_NAMES, export_onnx

        path = export_onnx(model.cpu(), inputs_cpu, path)
        names = INPUT_NAMES
    wanted = [
        p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()
    ]
    sess = ort.InferenceSession(str(path), providers=wanted)
    feeds = {n: t.numpy() for n, t in zip(names, inputs_cpu, strict=True)}
    return (lambda: sess.run(None, feeds)), sess.get_providers()[0]


def frame_and_inputs(cfg, model, raw_wh: tuple[int, int] | None) -> tuple[torch.nn.Module, tuple]:
    """The per-frame module of the recipe's family and its example inputs (CPU)."""
    if cfg.model.arch == "bevdet":
        from bevforge.export.bevdet_onnx import BEVDetEager, example_images
        from bevforge.export.rig import input_hw, rig_lidar2img

        images = example_images(cfg, input_hw(cfg, raw_wh))
        return BEVDetEager(model).eval(), (images, rig_lidar2img(cfg, raw_wh))
    if cfg.model.arch != "bevformer":
        raise ValueError(f"model.arch {cfg.model.arch!r}: bench infer knows 'bevformer' and 'bevdet'")
    from bevforge.export.onnx_model import BEVFormerFrame, example_inputs

    return BEVFormerFrame(model).eval(), example_inputs(cfg, raw_wh)


def _sca_fused(model: torch.nn.Module, device: str) -> bool:
    """Whether the model's spatial cross-attention runs as one op over the cameras on ``device``."""
    from bevforge.nn.spatial_cross_attn import SpatialCrossAttention

    probe = torch.empty(0, device=device)
    return any(m.fused(probe) for m in model.modules() if isinstance(m, SpatialCrossAttention))


def bench_modes(cfg, ckpt: str | None, modes: list[str], args: argparse.Namespace) -> list[dict]:
    from bevforge.models.build import build_model

    model = build_model(cfg).eval()
    if ckpt:
        from bevforge.eval.pipeline import load_checkpoint

        load_checkpoint(model, ckpt)
    if args.channels_last or cfg.train.channels_last:  # as `bevforge test` runs the recipe
        from bevforge.train.setup import channels_last_

        channels_last_(model)
    frame0, inputs_cpu = frame_and_inputs(cfg, model, tuple(args.raw_wh) if args.raw_wh else None)
    amp = AMP[args.amp]
    rows = []
    for mode in modes:
        row: dict = {"mode": mode, "note": ""}
        try:
            if mode == "onnxruntime":
                with tempfile.TemporaryDirectory() as tmp:
                    dynamic = bool(getattr(args, "dynamic_rig", False))
                    fn, provider = _ort_fn(model, inputs_cpu, tmp, cfg.model.arch, dynamic)
                    row["note"] = f"{provider}, fp32"
                    if cfg.model.arch == "bevdet":
                        row["note"] += ", lidar2img input" if dynamic else ", pooling plan baked in"
                    row.update(time_frames(fn, args.warmup, args.iters, "cpu"))
                    row["peak_mib"] = None
                continue
            model.to(args.device)
            inputs = tuple(t.to(args.device) for t in inputs_cpu)
            frame = frame0
            if mode == "compile":
                from bevforge.ops.dispatch import prime_kernel_ops

                prime_kernel_ops()  # no first import inside the traced frame (a graph break)
                frame = torch.compile(frame)
            with kernels("reference" if mode == "eager-ref" else None):
                if mode in ("eval", "eval-graph"):
                    if cfg.model.arch != "bevformer":
                        raise ValueError(f"{mode} times BEVFormer's evaluation forward")
                    fn = _eval_fn(model, inputs, amp, args.device, graph=mode == "eval-graph")
                else:
                    make_fn = _graph_fn if mode == "cuda-graph" else _torch_fn
                    fn = make_fn(frame, inputs, amp, args.device)
                graph_note = ""
                try:
                    row.update(time_frames(fn, args.warmup, args.iters, args.device))
                finally:
                    if getattr(model, "infer_graph", None) is not None:
                        graph_note = f", {model.infer_graph.outcome('graph')}"  # a fallback is said
                    if hasattr(model, "infer_graph"):
                        model.infer_graph = None  # eval-graph's holder, with its memory pool
                sca_fused = cfg.model.arch == "bevformer" and _sca_fused(model, args.device)
            row["note"] = f"amp {args.amp}{graph_note}"
            if mode == "compile" and not str(args.device).startswith("cuda"):
                # 2.7x slower than ATen's kernel on the SCA's shapes (CPU, 2 cores, fifteenth session)
                row["note"] += (
                    ", CPU: inductor decomposes the reference MSDA's grid_sample (slower than eager)"
                )
            if str(args.device).startswith("cuda"):
                tuned = torch.backends.cudnn.benchmark
                row["note"] += ", cuDNN autotuned" if tuned else ", cuDNN heuristics (train.deterministic)"
            if cfg.model.backbone.fuse_conv_relu:
                from bevforge.bench.train import fused_convs_label

                row["note"] += f", {fused_convs_label(str(args.device))}"
            if cfg.model.arch == "bevdet":
                row["note"] += ", pooling plan cached"
            if sca_fused:
                row["note"] += ", SCA fused over cameras"
            if mode in ("cuda-graph", "eval-graph") and cfg.model.arch == "bevformer" and not sca_fused:
                from bevforge.models.history_graph import sca_hit_overflow

                # the SCA gathers a static number of hit queries under capture (learnt in the warm-up)
                row["note"] += ", SCA hit bound OVERFLOWED" if sca_hit_overflow(model) else ", SCA hit bound"
        except Exception as e:  # a mode that cannot run here is reported, the others still run
            row["note"] = f"skipped: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
        finally:
            rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    def f(x, spec=".2f"):
        return "n/a" if x is None else format(x, spec)

    lines = ["| mode | p50 ms | p90 ms | p99 ms | FPS | peak MiB | note |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {f(r.get('p50'))} | {f(r.get('p90'))} | {f(r.get('p99'))} | "
            f"{f(r.get('fps'), '.1f')} | {f(r.get('peak_mib'), '.0f')} | {r['note']} |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from bevforge.config import ConfigError, load_config

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available; pass --device cpu", file=sys.stderr)
        return 2
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        print(f"error: --modes {unknown} unknown; choose from {', '.join(MODES)}", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config, args.overrides)
        # speed does not depend on the weights: random init (--ckpt loads real ones), no weight file needed
        cfg.model.backbone.pretrained = ""
        from bevforge.train.setup import inference_backends

        with inference_backends(cfg.train):  # as `bevforge test` runs the recipe
            rows = bench_modes(cfg, args.ckpt, modes, args)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    m = cfg.model
    table = format_table(rows)
    print(table)
    shape = f"batch 1, {len(cfg.data.cameras)} cameras, BEV {m.bev_h}x{m.bev_w}"
    if m.arch == "bevdet":
        from bevforge.export.rig import input_hw

        h, w = input_hw(cfg, tuple(args.raw_wh) if args.raw_wh else None)
        shape += f", input {h}x{w}, context {m.bevdet.context_channels}"
    else:
        shape += f", embed {m.embed_dims}"
    shape += ", channels-last backbone + neck" if args.channels_last or cfg.train.channels_last else ""
    body = f"recipe `{cfg.name}` ({shape}), checkpoint {args.ckpt or 'random init'}\n\n{table}"
    path = append_result(args.out, f"inference {cfg.name}", args.device, body)
    print(f"appended to {path}")
    return 0
