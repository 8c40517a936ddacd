"""`bevforge bench train`: timing loop on the stand-in and the markdown section."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from bevforge.bench.results import append_result
from bevforge.bench.train import benchmark, result_body

sys.path.insert(0, str(Path(__file__).parent))
import train_standin as si  # noqa: E402


def test_benchmark_numbers_and_results_section(tmp_path) -> None:
    torch.manual_seed(0)
    res = benchmark(si.tiny_config(), warmup=1, iters=3, model=si.StandInModel(),
                    criterion=si.StandInCriterion(), loader=si.make_loader(4, 2))  # fmt: skip
    assert res["samples_per_s"] > 0 and res["step_ms"] > 0 and 0 <= res["data_share"] <= 1
    assert res["global_batch"] == 2 and res["peak_mem_gib"] is None and res["amp"] == "off"
    assert res["peak_reserved_gib"] is None
    out = tmp_path / "train.md"
    append_result(out, "train standin", res["device"], result_body(res, "standin"))
    text = out.read_text()
    assert "## train standin" in text and "- commit:" in text and "- device: CPU" in text
    assert "| standin | off | 2 |" in text
    # on CUDA the memory column shows the allocator's peak reserved bytes beside the allocated peak
    cuda_row = result_body({**res, "peak_mem_gib": 10.0, "peak_reserved_gib": 11.5}, "standin")
    assert "| 10.00 (11.50) |" in cuda_row and "peak mem GiB (reserved)" in cuda_row
    # the GPU-busy column: "-" on the CPU, the share on CUDA, why where the profiler could not say
    assert res["gpu_busy"] is None and "| GPU busy |" in text and "| - | - | eager | 1.00x |" in text
    assert "| 73% | 10.00" in result_body({**res, "gpu_busy": 0.73, "peak_mem_gib": 10.0}, "standin")
    failed = {**res, "gpu_busy_note": "profiler failed: RuntimeError: CUPTI"}
    assert "| - (profiler failed: RuntimeError: CUPTI) |" in result_body(failed, "standin")


def test_busy_time_is_the_union_of_the_device_intervals() -> None:
    from bevforge.bench.train import busy_us

    assert busy_us([]) == 0.0
    assert busy_us([(0, 10), (20, 30)]) == 20.0
    assert busy_us([(20, 30), (0, 10), (5, 12), (25, 26), (29, 40)]) == 32.0  # overlaps count once


class _Range:
    def __init__(self, start, end):
        self.start, self.end = start, end


class _Event:
    def __init__(self, device_type, start, end, activity_type="kernel"):
        self.device_type, self.time_range, self.activity_type = device_type, _Range(start, end), activity_type


def test_gpu_busy_from_the_profilers_device_events(monkeypatch) -> None:
    """What the profiler hands over on CUDA (host events, device events of two streams), faked: the busy
    share is the union of the device events over the wall time; a failing profiler is said, not raised."""
    from torch.autograd import DeviceType

    from bevforge.bench import train as bench_train

    clock = iter([100.0, 100.001])  # the two perf_counter reads around the steps: 1000 us of wall time
    monkeypatch.setattr(bench_train.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    events = [
        _Event(DeviceType.CPU, 0, 900),
        _Event(DeviceType.CUDA, 0, 300),
        _Event(DeviceType.CUDA, 200, 500),
    ]
    events.append(_Event(DeviceType.CUDA, 700, 700))  # an empty span (an instant marker)
    events.append(_Event(DeviceType.CUDA, 600, 650, "gpu_memcpy"))  # a copy is work too
    events.append(_Event(DeviceType.CUDA, 0, 1000, "gpu_user_annotation"))  # a range marker is not

    class FakeProfile:
        def __init__(self, activities):
            assert activities == [torch.profiler.ProfilerActivity.CUDA]

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def events(self):
            return events

    monkeypatch.setattr(torch.profiler, "profile", FakeProfile)
    calls = []
    busy, note = bench_train.gpu_busy(lambda: calls.append(1), steps=2)
    assert calls == [1, 1] and note == "" and abs(busy - 0.55) < 1e-9  # 550 us of 1000

    events[:] = [_Event(DeviceType.CPU, 0, 900)]
    clock = iter([0.0, 1.0])
    monkeypatch.setattr(bench_train.time, "perf_counter", lambda: next(clock))
    assert bench_train.gpu_busy(lambda: None, steps=1) == (
        None,
        "no GPU activity in the profile (CUPTI unavailable?)",
    )

    def broken(activities):
        raise RuntimeError("CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED")

    monkeypatch.setattr(torch.profiler, "profile", broken)
    busy, note = bench_train.gpu_busy(lambda: None, steps=1)
    assert busy is None and note.startswith("profiler failed: RuntimeError: CUPTI_ERROR"), note


def test_rows_name_the_speed_options_and_a_fallback(monkeypatch) -> None:
    from bevforge.bench.train import option_labels
    from bevforge.config import load_config
    from bevforge.models import fused_conv

    cfg = load_config("bevformer_base")
    assert option_labels(cfg, "cuda") == []
    cfg.train.history_graph, cfg.model.backbone.fuse_conv_relu = True, True
    monkeypatch.setattr(fused_conv, "FUSED_DISABLED", None)
    assert option_labels(cfg, "cuda:0") == ["history graph", "fused convs"]
    assert option_labels(cfg, "cpu") == ["history graph", "fused convs (CUDA only: plain on cpu)"]
    monkeypatch.setattr(fused_conv, "FUSED_DISABLED", "RuntimeError: no engine")
    assert option_labels(cfg, "cuda") == ["history graph", "fused convs FELL BACK (RuntimeError: no engine)"]
    cfg.train.frame_graph = True
    assert option_labels(cfg, "cuda")[:2] == ["history graph", "frame graph"]
    cfg.model.sca_fuse_cameras = "off"  # the default (auto) is the kernel over the cameras on CUDA
    assert option_labels(cfg, "cuda")[-1] == "SCA per-camera gather"


def test_rows_say_when_a_graph_fell_back_or_never_replayed() -> None:
    """The graph labels of a row come from the holders after the run (``GraphHolder.outcome``): a capture
    that failed or a graph that never replayed (the CPU) is in the row, not the option's bare name."""
    from bevforge.bench.train import graph_outcomes, option_labels
    from bevforge.config import load_config
    from bevforge.models.frame_graph import FrameGraph
    from bevforge.models.history_graph import HistoryGraph

    model = torch.nn.Module()
    model.history_graph, model.frame_graph = HistoryGraph(), FrameGraph()
    model.history_graph.replays = 5
    model.frame_graph.failures.append("RuntimeError: operation not permitted when stream is capturing")
    outcomes = graph_outcomes(model)
    assert outcomes == [
        "history graph",
        "frame graph FELL BACK to eager (RuntimeError: operation not permitted when stream is capturing)",
    ]
    cfg = load_config("bevformer_base")
    cfg.train.history_graph = cfg.train.frame_graph = True
    assert option_labels(cfg, "cuda", outcomes)[:2] == outcomes
    model.history_graph.replays = 0
    assert graph_outcomes(model)[0] == "history graph NOT REPLAYED"
    assert graph_outcomes(torch.nn.Module()) == []


def test_bench_train_with_both_graphs_emulated_replays_them(monkeypatch) -> None:
    """`bench train --set train.history_graph=true train.frame_graph=true` (gpu_check's graphs rows) with
    the CUDA graphs emulated on the CPU (the history pass re-run into its captured buffer, the frame as
    make_graphed_callables builds it): the steps run through the graphs and the row says they replayed."""
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "models"))
    from graph_fakes import emulate_training_graphs

    from bevforge.bench.train import FakeLoader
    from bevforge.config import load_config

    calls = emulate_training_graphs(monkeypatch)
    cfg = load_config("bevformer_debug", ["train.history_graph=true", "train.frame_graph=true"])
    res = benchmark(cfg, warmup=2, iters=2, loader=FakeLoader(cfg, num=2))
    assert res["graphs"] == ["history graph", "frame graph"], res["graphs"]  # no NOT REPLAYED, no FELL BACK
    assert len(calls) == 1 and res["samples_per_s"] > 0
