"""eval.cuda_graph: an inference frame as a function of tensors (captured as a CUDA graph on a GPU) is the
eager frame: the same predictions and temporal state over scene starts; the evaluation runner attaches
a holder for one pass and drops it. The ``gpu`` test replays the captured graph."""

from __future__ import annotations

import copy

import pytest
import torch
from graph_fakes import record_by_rerunning
from test_bevformer_forward import debug_model, random_batch

from bevforge.config import load_config
from bevforge.eval.runner import infer_batches
from bevforge.models.build import build_model
from bevforge.models.infer_graph import InferenceGraph

# one frame per batch, two lanes; lane 1 starts a new scene at frame 2, lane 0 has a padding frame
SCENES = [[["a"], ["x"]], [["a"], ["x"]], [["a"], ["y"]], [["a"], ["y"]], [["b"], ["y"]]]
VALID = [None, None, None, torch.tensor([[False], [True]]), None]


def _frames(device: str = "cpu"):
    torch.manual_seed(7)
    return [random_batch(s, v).to(device) for s, v in zip(SCENES, VALID, strict=True)]


def _run(model, frames):
    """Predictions and states of ``frames`` in order, the state carried (as the evaluation runner)."""
    state, out = None, []
    with torch.inference_mode():
        for batch in frames:
            preds, state = model(batch, state)
            out.append(({k: v.clone() for k, v in preds.items()}, state))
    return out


def test_inference_graph_path_is_the_eager_frame(monkeypatch):
    import bevforge.models.infer_graph as ig

    torch.manual_seed(0)
    model = debug_model(with_seg=True).eval()
    other = copy.deepcopy(model)
    other.infer_graph = InferenceGraph()
    calls = []
    real = ig.frame_preds
    monkeypatch.setattr(ig, "frame_preds", lambda *a: calls.append(a[1].shape) or real(*a))
    frames = _frames()
    want, got = _run(model, frames), _run(other, frames)
    assert calls == [(2 * 6, 3, 64, 96)] * 4, "every frame with a state went through the graph's function"
    for (w, w_state), (g, g_state) in zip(want, got, strict=True):
        assert g.keys() == w.keys() and {"bev", "cls_logits", "box_code", "seg_logits"} <= g.keys()
        for key in w:
            torch.testing.assert_close(g[key], w[key], rtol=0, atol=0, msg=key)
        torch.testing.assert_close(g_state.prev_bev, w_state.prev_bev, rtol=0, atol=0)
        torch.testing.assert_close(g_state.prev_can_bus, w_state.prev_can_bus, rtol=0, atol=0)
        assert g_state.scene_tokens == w_state.scene_tokens
    assert other.infer_graph.replays == 0, "no CUDA: run eagerly, nothing captured"


def test_training_and_multi_frame_batches_take_the_eager_path(monkeypatch):
    model = debug_model()
    model.infer_graph = InferenceGraph()
    calls = []
    monkeypatch.setattr(InferenceGraph, "run", lambda self, *a: calls.append(a))
    model.train()(random_batch([["a", "a"], ["b", "b"]]))  # a training queue
    with torch.no_grad():
        state = model.train()(random_batch([["a"], ["b"]]))[1]  # training mode without grad
        model.eval()(random_batch([["a", "a"], ["b", "b"]]), state)  # two frames at once
    assert calls == []


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_runner_attaches_a_holder_for_one_pass(cuda_graph, monkeypatch):
    cfg = load_config("bevformer_debug", [f"eval.cuda_graph={str(cuda_graph).lower()}"])
    torch.manual_seed(0)
    model = debug_model()
    seen = []
    real = InferenceGraph.run
    monkeypatch.setattr(InferenceGraph, "run", lambda self, *a: seen.append(self) or real(self, *a))
    frames = _frames()
    for i, batch in enumerate(frames):
        batch.sample_tokens = [f"f{i}l{b}" for b in range(batch.batch_size)]
    results = infer_batches(model, frames, cfg)
    assert model.infer_graph is None, "dropped after the pass"
    assert len(seen) == (4 if cuda_graph else 0) and len({id(h) for h in seen}) <= 1
    reference = infer_batches(debug_model_copy(model), frames, load_config("bevformer_debug"))
    assert results.keys() == reference.keys() and len(results) == 10
    for token, res in reference.items():
        for key, value in res.items():
            assert (results[token][key] == value).all(), (token, key)


def debug_model_copy(model):
    other = copy.deepcopy(model)
    other.infer_graph = None
    return other


def _emulated_on_the_cpu(record, monkeypatch):
    """``(eager model, a copy with an InferenceGraph whose ``_record`` is ``record``, the frames)`` on the
    CPU, every frame taken as replayable."""
    monkeypatch.setattr(InferenceGraph, "_replayable", staticmethod(lambda tensors: True))
    monkeypatch.setattr(InferenceGraph, "_record", record)
    torch.manual_seed(0)
    model = debug_model(with_seg=True).eval()
    graphed = copy.deepcopy(model)
    graphed.infer_graph = InferenceGraph()
    return model, graphed, _frames()


def _assert_the_same_frames(got, want):
    """Bitwise the same predictions and states, frame by frame."""
    for (w, w_state), (g, g_state) in zip(want, got, strict=True):
        for key in w:
            torch.testing.assert_close(g[key], w[key], rtol=0, atol=0, msg=key)
        torch.testing.assert_close(g_state.prev_bev, w_state.prev_bev, rtol=0, atol=0)
        assert g_state.scene_tokens == w_state.scene_tokens


def test_capture_and_replays_emulated_on_the_cpu(monkeypatch):
    """The holder's orchestration with the CUDA graph emulated (a replay re-runs the captured function
    into the captured buffers): eager first frame, capture, replays that copy each frame's tensors in;
    the same predictions and states as eager frames over scene starts and padding frames."""
    model, graphed, frames = _emulated_on_the_cpu(record_by_rerunning, monkeypatch)
    want, got = _run(model, frames), _run(graphed, frames)  # eager, eager (learns), capture, 2 replays
    _assert_the_same_frames(got, want)
    assert graphed.infer_graph.replays == 3 and len(graphed.infer_graph._graphs) == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
def test_cuda_graph_replays_the_eager_frame(amp, monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    cfg = load_config("bevformer_debug", ["model.bev_h=12", "model.bev_w=12", "model.num_queries=20"])
    model = build_model(cfg).cuda().eval()
    graphed = copy.deepcopy(model)
    graphed.infer_graph = InferenceGraph()
    frames = _frames("cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        want, got = _run(model, frames), _run(graphed, frames)  # eager, eager (learns), capture, 2 replays
    tol = dict(rtol=3e-2, atol=3e-2) if amp else dict(rtol=1e-4, atol=1e-4)
    for (w, w_state), (g, g_state) in zip(want, got, strict=True):
        for key in w:
            torch.testing.assert_close(g[key].float(), w[key].float(), **tol, msg=key)
        torch.testing.assert_close(g_state.prev_bev.float(), w_state.prev_bev.float(), **tol)
    assert graphed.infer_graph.replays == 3 and len(graphed.infer_graph._graphs) == 1


def test_a_failed_capture_leaves_the_frames_eager(monkeypatch):
    """A capture that raises (emulated on the CPU) is warned about once; every frame is still the eager
    frame, and the signature is not captured again."""
    tries = []

    def record(self, run):
        tries.append(1)
        raise RuntimeError("operation not permitted when stream is capturing")

    model, graphed, frames = _emulated_on_the_cpu(record, monkeypatch)
    want = _run(model, frames)
    with pytest.warns(UserWarning, match="eval.cuda_graph: capturing a CUDA graph failed") as caught:
        got = _run(graphed, frames)
    assert len([w for w in caught if "capturing" in str(w.message)]) == 1 and tries == [1]
    _assert_the_same_frames(got, want)
    assert graphed.infer_graph.replays == 0 and len(graphed.infer_graph._failed) == 1
