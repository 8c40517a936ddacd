"""train.frame_graph: the current frame of a training step as a function of tensors (captured as CUDA graphs
on a GPU) is the eager frame: the same predictions, state and gradients; it refuses what it cannot do
(compile, non-BEVFormer models; under DDP, unused parameters and SyncBN). The ``gpu`` test replays the
captured graphs."""

from __future__ import annotations

import contextlib
import copy
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from frame_graph_ddp import SquaredPredictions
from graph_fakes import emulate_training_graphs
from test_bevformer_forward import debug_model, random_batch

from bevforge.config import ConfigError, load_config
from bevforge.doctor.smoke import free_port
from bevforge.models.build import build_model
from bevforge.models.frame_graph import FrameGraph
from bevforge.train.setup import apply_speed_options

SCENES = [["a", "a", "a", "a"], ["x", "y", "y", "y"], ["p", "p", "p", "q"]]
VALID = torch.tensor([[True, True, True, True], [True, True, False, True], [False, True, True, True]])


def _step(model, batch, seed: int):
    """Predictions, state and parameter gradients of one training forward + backward."""
    torch.manual_seed(seed)  # GridMask and dropout draw the same in both models
    preds, state = model(batch)
    sum(v.float().square().mean() for v in preds.values()).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return preds, state, grads


def test_frame_graph_path_is_the_eager_frame(monkeypatch):
    import bevforge.models.frame_graph as fg

    torch.manual_seed(0)
    model = debug_model().train()  # its BNs train: each forward moves their statistics, so two models
    other = copy.deepcopy(model)
    other.frame_graph = FrameGraph()
    calls = []
    real = fg.frame_preds
    monkeypatch.setattr(fg, "frame_preds", lambda *a: calls.append(a[1].shape) or real(*a))
    batch = random_batch(SCENES, VALID)
    want, want_state, want_grads = _step(model, batch, 1)
    got, got_state, got_grads = _step(other, batch, 1)
    assert calls == [(3 * 6, 3, 64, 96)], "the graph's function ran once, on the current frame's images"
    assert got.keys() == want.keys() and {"bev", "cls_logits", "box_code"} <= got.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=key)
    torch.testing.assert_close(got_state.prev_bev, want_state.prev_bev, rtol=0, atol=0)
    torch.testing.assert_close(got_state.prev_can_bus, want_state.prev_can_bus, rtol=0, atol=0)
    assert got_state.scene_tokens == want_state.scene_tokens
    assert got_grads.keys() == want_grads.keys() and want_grads
    for name in want_grads:
        torch.testing.assert_close(got_grads[name], want_grads[name], rtol=0, atol=0, msg=name)
    assert other.frame_graph.replays == 0, "no CUDA: run eagerly, nothing captured"


def test_one_frame_queues_and_evaluation_take_the_eager_path(monkeypatch):
    model = debug_model()
    model.frame_graph = FrameGraph()
    calls = []
    monkeypatch.setattr(FrameGraph, "run", lambda self, *a: calls.append(a))
    one_frame = random_batch([["a"], ["b"], ["c"]])  # no history: no previous BEV to feed a graph
    model.train()(one_frame)
    with torch.no_grad():
        model.eval()(random_batch(SCENES, VALID))
    assert calls == []


def test_frame_graph_config():
    cfg = load_config("bevformer_debug", ["train.frame_graph=true", "train.history_graph=true"])
    model = apply_speed_options(build_model(cfg), cfg.train)
    assert isinstance(model.frame_graph, FrameGraph)
    assert "frame_graph" not in dict(model.named_modules()) and not any(
        "frame_graph" in k for k in model.state_dict()
    )
    cfg.train.compile = "default"
    cfg.train.history_graph = False
    with pytest.raises(ConfigError, match="frame_graph and train.compile"):
        apply_speed_options(build_model(cfg), cfg.train)
    cfg.train.compile, cfg.train.accum_steps = "", 2
    with pytest.raises(ConfigError, match="cannot accumulate gradients"):
        apply_speed_options(build_model(cfg), cfg.train)
    bevdet = load_config("bevdet_debug", ["train.frame_graph=true", "model.backbone.pretrained="])
    with pytest.raises(ConfigError, match="for BEVFormer models"):
        apply_speed_options(build_model(bevdet), bevdet.train)


def test_copies_start_without_graphs():
    graph = FrameGraph(max_graphs=3, warmup=1)
    graph._graphs[("k",)] = object()
    graph._seen[("k",)] = ("bev",)
    for clone in (copy.deepcopy(graph), pickle.loads(pickle.dumps(graph))):
        assert clone._graphs == {} and clone._seen == {} and (clone.max_graphs, clone.warmup) == (3, 1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
def test_cuda_graphs_replay_the_eager_frame(amp, monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    cfg = load_config("bevformer_debug", ["model.bev_h=12", "model.bev_w=12", "model.num_queries=20",
                                          "model.dropout=0.0", "model.use_grid_mask=false"])  # fmt: skip
    model = build_model(cfg).cuda().train()
    graphed = copy.deepcopy(model)
    graphed.frame_graph = FrameGraph()
    for seed in (1, 2, 3, 4):  # eager (learns), capture, replay, replay: new images and rigs each time
        torch.manual_seed(seed)
        batch = random_batch(SCENES, VALID if seed != 3 else torch.ones(3, 4, dtype=torch.bool)).to("cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            want, _, want_grads = _step(model, batch, seed)
            got, _, got_grads = _step(graphed, batch, seed)
        tol = dict(rtol=3e-2, atol=3e-2) if amp else dict(rtol=1e-4, atol=1e-4)
        for key in want:
            torch.testing.assert_close(got[key].float(), want[key].float(), **tol, msg=key)
        for name in want_grads:
            scale = want_grads[name].abs().max().item()
            torch.testing.assert_close(got_grads[name], want_grads[name], rtol=tol["rtol"],
                                       atol=tol["atol"] * max(scale, 1e-6), msg=name)  # fmt: skip
        model.zero_grad(set_to_none=True)
        graphed.zero_grad(set_to_none=True)
        with torch.no_grad():  # the debug BNs train: keep the two models' statistics equal
            for a, b in zip(model.buffers(), graphed.buffers(), strict=True):
                b.copy_(a)
    assert graphed.frame_graph.replays == 3 and len(graphed.frame_graph._graphs) == 1


@pytest.mark.parametrize(
    ("settings", "device", "match"),
    [
        (["train.find_unused_parameters=true"], "cpu", "needs a gradient for every trained parameter"),
        (["train.sync_bn=true"], "cuda", "train.frame_graph with train.sync_bn"),
    ],
)
def test_under_ddp_unused_parameters_and_sync_bn_are_refused(settings, device, match):
    from bevforge.train.distributed import DistInfo
    from bevforge.train.setup import wrap_model

    cfg = load_config("bevformer_debug", ["train.frame_graph=true", *settings])
    two = DistInfo(
        rank=0, world_size=2, local_rank=0, device=torch.device(device, 0 if device == "cuda" else None)
    )
    with pytest.raises(ConfigError, match=match):
        wrap_model(build_model(cfg), cfg, two, print)


def test_ddp_steps_with_the_emulated_graphs_are_the_eager_ddp_steps(tmp_path):
    """Two gloo processes (``frame_graph_ddp.py``), each on its own batches, train the debug model through
    ``wrap_model`` and the Stepper eagerly and with the frame graph emulated as torch builds it: DDP's hooks
    get the gradients from the backward "graph" and all-reduce them; both runs end with the same
    parameters on both ranks."""
    here = Path(__file__).resolve().parent
    env = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")
    }
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(here.parents[2] / "src"), str(here)]))
    port = free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(port), str(here / "frame_graph_ddp.py"),
           str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for rank in ranks:
        assert rank["graphed"]["replays"] == 3, "eager first step, then captured and replayed"
        assert rank["graphed"]["losses"] == rank["eager"]["losses"]
        for name, want in rank["eager"]["params"].items():
            torch.testing.assert_close(rank["graphed"]["params"][name], want, rtol=0, atol=0, msg=name)
    assert ranks[0]["eager"]["losses"] != ranks[1]["eager"]["losses"], "each rank trains on its own batches"
    for name, want in ranks[0]["graphed"]["params"].items():  # the gradients were all-reduced
        torch.testing.assert_close(ranks[1]["graphed"]["params"][name], want, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("with_seg", [False, True])
def test_the_captured_module_owns_every_trained_parameter(with_seg):
    """make_graphed_callables hands gradients to the captured module's parameters only: a trained
    parameter outside it would silently stop learning."""
    from bevforge.models.frame_graph import _Frame

    model = debug_model(with_seg=with_seg).train()
    frame = _Frame(model, (64, 96), 6, ("bev",))
    owned = {id(p) for p in frame.parameters()}
    trained = {n for n, p in model.named_parameters() if p.requires_grad and id(p) not in owned}
    assert not trained, trained
    assert "_model" not in dict(frame.named_children())  # a reference, not a second parent


@pytest.mark.parametrize("history_graph", [False, True])
def test_graphed_frames_are_not_projected_beforehand(history_graph, monkeypatch):
    """BEVEncoder.project_frames serves the eager frames only: a captured pass projects its own."""
    from bevforge.models.bev_encoder import BEVEncoder
    from bevforge.models.history_graph import HistoryGraph

    asked = []
    real = BEVEncoder.project_frames
    monkeypatch.setattr(BEVEncoder, "project_frames", lambda self, l2i, hw, frames: asked.append(list(frames))
                        or real(self, l2i, hw, frames))  # fmt: skip
    model = debug_model().train()
    model.frame_graph = FrameGraph()
    model.history_graph = HistoryGraph() if history_graph else None
    model(random_batch(SCENES, VALID))
    assert asked == [[] if history_graph else [0, 1, 2]]


def _emulate_capture_on_the_cpu(monkeypatch, fail: bool = False) -> list:
    """The training graphs faked on the CPU (``graph_fakes.emulate_training_graphs``: the frame's capture
    built as torch builds it, one autograd Function, the captured output and gradient buffers rewritten at
    each "replay"), the frame's raising after its warm-up when ``fail``. Returns its calls."""
    error = RuntimeError("operation not permitted when stream is capturing") if fail else None
    return emulate_training_graphs(monkeypatch, fail=error)


@pytest.mark.parametrize("fail", [False, True], ids=["captured", "capture-fails"])
def test_capture_and_replays_emulated_on_the_cpu(fail, monkeypatch):
    """FrameGraph's orchestration with the capture emulated: the first step eager (learns the prediction
    keys), the second captures (warm-up, the holder's pool) and later ones "replay"; predictions, states
    and gradients those of the eager model step after step, or, when the capture raises, a warning and
    eager steps from then on (no second attempt)."""
    calls = _emulate_capture_on_the_cpu(monkeypatch, fail)
    torch.manual_seed(0)
    model = debug_model().train()
    other = copy.deepcopy(model)
    other.frame_graph = FrameGraph()
    kept = {}  # replays 3 and 4: (state, its BEV then, prediction and gradient storages)
    for seed in (1, 2, 3, 4):
        batch = random_batch(SCENES, VALID if seed != 3 else torch.ones(3, 4, dtype=torch.bool))
        want, want_state, want_grads = _step(model, batch, seed)
        warned = fail and seed == 2  # (a pytest.warns checker is falsy while empty: no `or` here)
        context = pytest.warns(UserWarning, match="train.frame_graph: capturing") if warned else None
        with contextlib.nullcontext() if context is None else context:
            got, got_state, got_grads = _step(other, batch, seed)
        assert got.keys() == want.keys()
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=key)
        torch.testing.assert_close(got_state.prev_bev, want_state.prev_bev, rtol=0, atol=0)
        assert got_grads.keys() == want_grads.keys()
        for name in want_grads:
            torch.testing.assert_close(got_grads[name], want_grads[name], rtol=0, atol=0, msg=name)
        if seed >= 3:
            storages = {k: v.data_ptr() for k, v in (*got.items(), *got_grads.items())}
            kept[seed] = (got_state, got_state.prev_bev.clone(), storages)
        for m in (model, other):
            m.zero_grad(set_to_none=True)
        with torch.no_grad():  # the debug BNs train: keep the two models' statistics equal
            for a, b in zip(model.buffers(), other.buffers(), strict=True):
                b.copy_(a)
    state, bev, storages = kept[3]
    torch.testing.assert_close(state.prev_bev, bev, rtol=0, atol=0, msg="a later replay changed a state")
    # replays rewrite the captured buffers: the predictions and the gradients (hence no accumulation)
    assert (storages == kept[4][2]) != fail
    assert calls == [(("pool", 1), 2, "thread_local")], "captured once, at the second step"
    holder = other.frame_graph
    assert (holder.replays, len(holder._graphs), len(holder._failed)) == ((0, 0, 1) if fail else (3, 1, 0))


@pytest.mark.parametrize("history_graph", [False, True], ids=["frame", "history+frame"])
def test_trainer_steps_with_the_emulated_graphs_are_the_eager_steps(history_graph, monkeypatch):
    """The Stepper's forward/backward, clipping (in place, on the graph's gradient buffers), AdamW and
    ``zero_grad`` around emulated replays (the frame graph's, and the history graph's feeding it): the
    parameters move as the eager model's, step after step."""
    from bevforge.models.history_graph import HistoryGraph
    from bevforge.train.optim import build_optimizer, build_scheduler
    from bevforge.train.step import Stepper

    _emulate_capture_on_the_cpu(monkeypatch)
    torch.manual_seed(0)
    model = debug_model().train()
    other = copy.deepcopy(model)
    other.frame_graph = FrameGraph()
    other.history_graph = HistoryGraph() if history_graph else None
    cfg = load_config("bevformer_debug")
    steppers = []
    for m in (model, other):
        optimizer = build_optimizer(m, cfg.train, torch.device("cpu"), lr=1e-3)
        scheduler = build_scheduler(optimizer, cfg.train, 10)
        steppers.append(Stepper(m, SquaredPredictions(), optimizer, scheduler, device=torch.device("cpu"),
                                amp="off", grad_clip=0.05, accum_steps=1, max_nan_steps=3))  # fmt: skip
    for seed in (1, 2, 3, 4, 5):
        batch = random_batch(SCENES, VALID)
        norms = []
        for stepper in steppers:
            torch.manual_seed(seed)
            stepper.forward_backward(batch)
            norms.append(stepper.optimizer_step())
        assert norms[0] > 0.05, "clipping is active"
        torch.testing.assert_close(norms[1], norms[0], rtol=0, atol=0)
        for (name, a), b in zip(model.named_parameters(), other.parameters(), strict=True):
            torch.testing.assert_close(b, a, rtol=0, atol=0, msg=f"step {seed}: {name}")
        with torch.no_grad():  # the capture's warm-up moved the BN statistics the history pass (eval) reads
            for a, b in zip(model.buffers(), other.buffers(), strict=True):
                b.copy_(a)
    assert other.frame_graph.replays == 4  # every step after the eager first
    assert other.history_graph is None or other.history_graph.replays == 5  # captured at the first
