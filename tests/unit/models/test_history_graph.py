"""train.history_graph: the history pass as a function of tensors (captured as a CUDA graph on a GPU) is
the eager pass: the same previous-BEV flags from scene tokens and padding frames, the same state, the
same predictions; it refuses what it cannot do (compile, non-BEVFormer models)."""

from __future__ import annotations

import pytest
import torch
from graph_fakes import record_by_rerunning
from test_bevformer_forward import debug_model, random_batch

from bevforge.config import ConfigError, load_config
from bevforge.models.build import build_model
from bevforge.models.history_graph import HistoryGraph, history_prev_exists
from bevforge.structures.temporal import TemporalState
from bevforge.train.setup import apply_speed_options

SCENES = [["a", "a", "a", "a"], ["x", "y", "y", "y"], ["p", "p", "p", "q"]]
VALID = torch.tensor([[True, True, True, True], [True, True, False, True], [False, True, True, True]])


def _eager_flags(batch) -> tuple[list[list[bool]], list[str]]:
    """The eager pass's flags, frame by frame through TemporalState (as BEVFormer.encode_frame does)."""
    num_b, num_t = batch.images.shape[:2]
    state, rows = None, []
    for t in range(num_t - 1):
        scenes = [s[t] for s in batch.scene_tokens]
        if state is None:
            rows.append([False] * num_b)
        else:
            rows.append(state.prev_exists(scenes, batch.frame_valid[:, t]).tolist())
        kept = [s if ok else "" for s, ok in zip(scenes, batch.frame_valid[:, t].tolist(), strict=True)]
        state = TemporalState(torch.zeros(num_b, 1, 1), torch.zeros(num_b, 18), kept)
    return [list(r) for r in zip(*rows, strict=True)], state.scene_tokens


def test_prev_exists_flags_are_the_temporal_states():
    batch = random_batch(SCENES, VALID)
    flags, scenes = history_prev_exists(batch)
    want_flags, want_scenes = _eager_flags(batch)
    assert flags.dtype == torch.bool and flags.shape == (3, 3)
    assert flags.tolist() == want_flags and scenes == want_scenes
    # the cases are all there: a previous BEV, a scene change, a padding frame before and at t
    assert want_flags == [[False, True, True], [False, False, False], [False, False, True]]
    assert want_scenes == ["a", "", "p"]


@pytest.mark.parametrize("training", [True, False])
def test_history_graph_path_is_the_eager_history_pass(training, monkeypatch):
    import bevforge.models.history_graph as hg

    torch.manual_seed(0)
    model = debug_model().train(training)
    batch = random_batch(SCENES, VALID)
    calls = []
    real = hg.history_bev
    monkeypatch.setattr(hg, "history_bev", lambda *a: calls.append(a[1].shape) or real(*a))
    with torch.no_grad():
        want = model._history_state(batch, None)
        model.history_graph = HistoryGraph()
        got = model._history_state(batch, None)
    assert calls == [(3, 3, 6, 3, 64, 96)], "the graph's function ran once, on the 3 history frames"
    assert model.training == training, "the mode is restored"
    torch.testing.assert_close(got.prev_bev, want.prev_bev, rtol=0, atol=0)
    torch.testing.assert_close(got.prev_can_bus, want.prev_can_bus, rtol=0, atol=0)
    assert got.scene_tokens == want.scene_tokens
    assert model.history_graph.replays == 0, "no CUDA: run eagerly, nothing captured"


def test_training_forward_with_the_history_graph_gives_the_same_predictions():
    import copy

    torch.manual_seed(0)
    model = debug_model().train()  # its BNs train: each forward moves their statistics, so two models
    other = copy.deepcopy(model)
    other.history_graph = HistoryGraph()
    batch = random_batch(SCENES, VALID)
    torch.manual_seed(1)
    want, want_state = model(batch)
    torch.manual_seed(1)  # GridMask and dropout draw the same in the current frame
    got, got_state = other(batch)
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=key)
    torch.testing.assert_close(got_state.prev_bev, want_state.prev_bev, rtol=0, atol=0)


def test_capture_and_replays_emulated_on_the_cpu(monkeypatch):
    """HistoryGraph's orchestration with the CUDA graph emulated (a replay re-runs the captured pass into
    the captured buffer): the first pass captured, later ones copy their tensors in and replay; the same
    state as the eager pass each time, over new images, flags and a scene change; one capture in all."""
    records = []

    def record(self, run):
        records.append(1)
        return record_by_rerunning(self, run)

    monkeypatch.setattr(HistoryGraph, "_replayable", staticmethod(lambda inputs: True))
    monkeypatch.setattr(HistoryGraph, "_record", record)
    torch.manual_seed(0)
    model = debug_model().train()
    graph = HistoryGraph()
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        batch = random_batch(SCENES, VALID if seed != 2 else torch.ones(3, 4, dtype=torch.bool))
        with torch.no_grad():
            model.history_graph = None
            want = model._history_state(batch, None)
            model.history_graph = graph
            got = model._history_state(batch, None)
        torch.testing.assert_close(got.prev_bev, want.prev_bev, rtol=0, atol=0)
        assert got.scene_tokens == want.scene_tokens
    assert records == [1] and graph.replays == 3 and len(graph._graphs) == 1


def test_a_given_state_takes_the_eager_pass(monkeypatch):
    model = debug_model().train()
    graph = model.history_graph = HistoryGraph()
    calls = []
    monkeypatch.setattr(HistoryGraph, "run", lambda self, *a: calls.append(a))
    batch = random_batch([["a", "a"]])
    state = TemporalState(torch.zeros(1, 12 * 12, 64), torch.zeros(1, 18), ["a"])
    with torch.no_grad():
        model._history_state(batch, state)
    assert calls == [] and graph is model.history_graph


def test_history_graph_config():
    cfg = load_config("bevformer_debug", ["train.history_graph=true"])
    model = apply_speed_options(build_model(cfg), cfg.train)
    assert isinstance(model.history_graph, HistoryGraph)
    cfg.train.compile = "reduce-overhead"
    with pytest.raises(ConfigError, match="history_graph and train.compile"):
        apply_speed_options(build_model(cfg), cfg.train)
    bevdet = load_config("bevdet_debug", ["train.history_graph=true", "model.backbone.pretrained="])
    with pytest.raises(ConfigError, match="for BEVFormer models"):
        apply_speed_options(build_model(bevdet), bevdet.train)


def test_copies_start_without_graphs():
    import copy
    import pickle

    graph = HistoryGraph(max_graphs=3, warmup=1)
    graph._graphs[("k",)] = object()
    for clone in (copy.deepcopy(graph), pickle.loads(pickle.dumps(graph))):
        assert clone._graphs == {} and (clone.max_graphs, clone.warmup) == (3, 1)


@pytest.mark.gpu
def test_cuda_graph_replays_the_eager_history_pass():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch.manual_seed(0)
    model = debug_model().cuda().train()
    graph = HistoryGraph()
    for seed in (1, 2, 3):  # capture once, then replay on new images, rigs and flags
        torch.manual_seed(seed)
        batch = random_batch(SCENES, VALID if seed != 2 else torch.ones(3, 4, dtype=torch.bool)).to("cuda")
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            want = model._history_state(batch, None)
            model.history_graph = graph
            got = model._history_state(batch, None)
            model.history_graph = None
        torch.testing.assert_close(got.prev_bev, want.prev_bev, rtol=2e-2, atol=2e-2)
        assert got.scene_tokens == want.scene_tokens
    assert graph.replays == 3 and len(graph._graphs) == 1


def test_record_warms_up_on_a_side_stream_then_captures_into_one_pool(monkeypatch):
    """GraphHolder._record's orchestration, with CUDA's stream and graph calls faked (CPU): ``warmup``
    runs off the capture stream, one captured run, into a pool made before the first capture and kept
    for the next."""
    import contextlib

    from bevforge.models.history_graph import GraphHolder

    events = []

    class Stream:
        def wait_stream(self, other):
            events.append("wait")

    class Graph:
        pass

    @contextlib.contextmanager
    def stream(s):
        events.append("side")
        yield
        events.append("main")

    @contextlib.contextmanager
    def graph(g, pool=None, capture_error_mode=None):
        events.append(f"capture(pool={pool}, {capture_error_mode})")
        yield

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: Stream())
    monkeypatch.setattr(torch.cuda, "stream", stream)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", graph)
    handles = iter(["pool-0", "pool-1"])
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: next(handles))
    holder = GraphHolder(warmup=3)
    runs = []
    _, out = holder._record(lambda: runs.append(len(events)) or "out")
    assert out == "out" and len(runs) == 4 and holder.pool == "pool-0"
    assert events == ["wait", "side", "main", "wait", "capture(pool=pool-0, thread_local)"]
    holder._record(lambda: None)
    assert events[-1] == "capture(pool=pool-0, thread_local)"


def test_graph_for_captures_after_the_eager_first_frame_and_a_failed_capture_runs_eagerly():
    """GraphHolder._graph_for: the first frame of a signature eager (``eager_first``), the second captured,
    later ones replayed; a capture that raises is warned about once (naming the option to turn off) and
    that signature runs eagerly from then on, never captured again; ``max_graphs`` bounds the rest."""
    from bevforge.models.history_graph import GraphHolder

    holder, model, tries = GraphHolder(max_graphs=2), torch.nn.Linear(2, 2), []
    holder.what = "train.some_graph"

    def capture(name, fail=False):
        def make():
            tries.append(name)
            if fail:
                raise RuntimeError("operation not permitted when stream is capturing\nmore detail")
            return name

        return make

    assert holder._graph_for(model, ("a",), capture("a")) is None and tries == [], "first frame eager"
    holder._seen[("a",)] = None
    assert holder._graph_for(model, ("a",), capture("a")) == "a" and tries == ["a"]
    assert holder._graph_for(model, ("a",), capture("a")) == "a" and tries == ["a"], "replayed"
    holder._seen[("b",)] = None
    with pytest.warns(
        UserWarning,
        match=r"train.some_graph: capturing a CUDA graph failed \(RuntimeError: "
        r"operation not permitted when stream is capturing\).*--set train.some_graph=false",
    ):
        assert holder._graph_for(model, ("b",), capture("b", fail=True)) is None
    assert holder._graph_for(model, ("b",), capture("b")) is None and tries == ["a", "b"], "not retried"
    assert holder._graph_for(model, ("c",), capture("c"), eager_first=False) == "c"
    assert holder._graph_for(model, ("d",), capture("d"), eager_first=False) is None, "max_graphs"
    assert tries == ["a", "b", "c"] and holder._failed == {("b",)}


def test_a_failed_capture_hands_its_pool_reservation_back(monkeypatch):
    """_release_failed_capture with CUDA faked (CPU): the caller's stream current again, the pool's routing
    ended and the unfinished capture's reference released (the holder takes a new pool next time); when no
    capture into the pool was under way (it failed in the warm-up) the pool is left alone. The CUDAGraph
    objects whose capture did not end are found in the traceback, to be kept alive."""
    from bevforge.models import history_graph as hg

    calls = []

    class Graph:
        def __init__(self, ended=False):
            self.ended = ended

        def pool(self):
            if not self.ended:
                raise RuntimeError("Called CUDAGraph::pool() without a preceding successful capture.")
            return "its pool"

    def fail_in_capture():
        graph = Graph()  # noqa: F841 - found through the traceback's frame
        fwd_graphs = [Graph(ended=True)]  # noqa: F841 - ended: it cleans up after itself, not kept
        bwd_graphs = [Graph(), Graph()]  # noqa: F841 - make_graphed_callables keeps its graphs in lists
        raise RuntimeError("capture failed")

    def release_after(fail, owner):
        try:
            fail()
        except RuntimeError as e:
            return hg._release_failed_capture(e, owner, "main-stream")

    def end_allocate(device, pool):
        calls.append(("end", pool))
        if pool == "idle":
            raise RuntimeError("endAllocatePool: not currently recording to mempool_id")

    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "set_stream", lambda s: calls.append(("stream", s)))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: calls.append(("sync",)))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch._C, "_cuda_endAllocateToPool", end_allocate, raising=False)
    monkeypatch.setattr(
        torch._C, "_cuda_releasePool", lambda d, p: calls.append(("release", p)), raising=False
    )
    for pool, want in (("busy", [("end", "busy"), ("release", "busy")]), ("idle", [("end", "idle")])):
        calls.clear()
        owner = hg.GraphHolder()
        owner.pool = pool
        kept = release_after(fail_in_capture, owner)
        assert calls == [("stream", "main-stream"), ("sync",), *want]
        assert owner.pool == (None if pool == "busy" else pool)
        assert len(kept) == 3 and all(isinstance(g, Graph) and not g.ended for g in kept)


# a real capture failure, in its own process: if torch's state after it were broken, the other CUDA tests of
# the run (gpu_check runs them in one process) would not suffer from it
_FAILED_CAPTURES = r"""
import warnings
import torch
from torch import nn
from bevforge.models.history_graph import GraphHolder

model = nn.Linear(4, 4).cuda()
x = torch.randn(8, 4, device="cuda")
stream = torch.cuda.current_stream()


def syncing(t):
    y = model(t)
    return y * float(y.sum() > 0)  # a host read: fine eagerly, not capturable


class Syncing(nn.Module):
    def forward(self, t):
        return syncing(t)


for kind in ("no-grad", "graphed-callables"):  # the history / inference holders, the frame graph
    holder = GraphHolder(warmup=1)
    if kind == "no-grad":
        capture = lambda: holder._capture_no_grad(model, syncing, (x,))
    else:
        sample = (x.clone().requires_grad_(),)
        capture = lambda: torch.cuda.make_graphed_callables(
            Syncing(), sample, num_warmup_iters=1, pool=holder._pool_id(), capture_error_mode="thread_local"
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        failed = holder._graph_for(model, (kind,), capture, eager_first=False)
    assert failed is None and any("capturing a CUDA graph failed" in str(w.message) for w in caught), caught
    # (torch may refuse the read before CUDA does: then the capture ends cleanly, nothing to hand back)
    assert torch.cuda.current_stream() == stream, kind
    loss = model(x).square().sum()  # eager training work goes on
    loss.backward()
    doubled = lambda: holder._capture_no_grad(model, lambda t: model(t) * 2, (x,))
    ok = holder._graph_for(model, ("ok",), doubled, eager_first=False)
    assert ok is not None and holder.pool is not None
    for _ in range(3):
        x2 = torch.randn(8, 4, device="cuda")
        with torch.no_grad():
            torch.testing.assert_close(ok((x2,)), model(x2) * 2)
torch.cuda.synchronize()
print("OK")
"""


@pytest.mark.gpu
def test_a_capture_that_syncs_falls_back_and_cuda_goes_on():
    """A real capture failure (a host read inside the captured function, through torch.cuda.graph and
    through make_graphed_callables): warned, None, the stream restored (and the pool handed back); eager
    forward and backward go on, and a later capture into the holder's new pool replays correctly."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _FAILED_CAPTURES], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("OK"), done.stdout + done.stderr
