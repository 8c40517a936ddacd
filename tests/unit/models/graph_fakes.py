"""The CUDA graph captures faked on the CPU: ``torch.cuda.make_graphed_callables`` as torch builds it (the
frame graph), and ``GraphHolder._record`` re-running into its buffers (:func:`record_by_rerunning`: the
history graph, inference frames).

What a graphed module is to autograd on a GPU, kept here: one ``autograd.Function`` over the flattened user
inputs and the module's parameters; its forward copies new inputs into the captured input buffers and
returns (detached) the captured output buffers; its backward copies the incoming gradients into captured
buffers and returns the captured gradient buffers, which ``AccumulateGrad`` adopts as ``.grad`` when there
is none. Only the "replay" differs: it runs the module's original forward on the input buffers (gradients
on, into fresh tensors whose results are copied into the output buffers) and ``autograd.grad`` of that run
in the backward. So a step that keeps a captured output or gradient past the next replay sees it
overwritten, as on a GPU, and DDP's hooks see the gradients arrive the way a graphed backward hands them.

The warm-up runs as torch's does (forward + ``autograd.grad`` of the parameters, ``.grad`` untouched); the
warm-up and the capture's own run draw their random numbers from a forked generator, so the steps around
them draw what the eager steps draw (on a GPU the capture's draws are its own too).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import arg_tree_leaves, tree_flatten, tree_leaves, tree_unflatten


def make_graphed_callables_on_the_cpu(
    module: nn.Module,
    sample_args: tuple[torch.Tensor, ...],
    num_warmup_iters: int = 3,
    allow_unused_input: bool = False,
    pool: Any = None,
    capture_error_mode: str = "global",
    *,
    fail: BaseException | None = None,
) -> nn.Module:
    """``module`` with its forward graphed (one callable, a module, as bevforge passes it); ``fail``: raise
    it where a capture would have failed (after the warm-up)."""
    assert isinstance(module, nn.Module) and isinstance(sample_args, tuple)
    params = tuple(module.parameters())
    static_inputs = tuple(arg_tree_leaves(*sample_args))  # torch captures on the sample tensors themselves
    surface = static_inputs + params
    grad_surface = tuple(t for t in surface if t.requires_grad)
    original_forward = module.forward

    def run() -> tuple[list[torch.Tensor], Any]:
        with torch.enable_grad():
            return tree_flatten(original_forward(*static_inputs))

    def grads_of(outputs: list[torch.Tensor], grad_outputs: list[torch.Tensor]) -> tuple:
        return torch.autograd.grad(
            outputs, grad_surface, grad_outputs, only_inputs=True, allow_unused=allow_unused_input
        )

    with torch.random.fork_rng():
        for _ in range(num_warmup_iters):
            outputs = [o for o in tree_leaves(module(*sample_args)) if o.requires_grad]
            if outputs:
                grads_of(outputs, [torch.zeros_like(o) for o in outputs])
        if fail is not None:
            raise fail
        captured, spec = run()  # the capture: its tensors become the output buffers
        wanted = [o for o in captured if o.requires_grad]
        probe = (
            grads_of(wanted, [torch.zeros_like(o) for o in wanted]) if wanted else (None,) * len(grad_surface)
        )
    static_outputs = tuple(o.detach() for o in captured)
    static_grad_outputs = tuple(torch.empty_like(o) if o.requires_grad else None for o in captured)
    gets_grad = dict(zip(map(id, grad_surface), (g is not None for g in probe), strict=True))
    static_grad_inputs = tuple(
        torch.empty_like(t) if t.requires_grad and gets_grad[id(t)] else None for t in surface
    )
    live: dict[str, list[torch.Tensor]] = {}

    class Graphed(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            for buf, new in zip(static_inputs, inputs, strict=False):
                if buf.data_ptr() != new.data_ptr():
                    buf.copy_(new)
            fresh, _ = run()  # the "replay"
            live["outputs"] = fresh
            for buf, new in zip(static_outputs, fresh, strict=True):
                buf.copy_(new.detach())
            return tuple(o.detach() for o in static_outputs)

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
            for buf, grad in zip(static_grad_outputs, grads, strict=True):
                if buf is not None and buf.data_ptr() != grad.data_ptr():
                    buf.copy_(grad)
            fresh = live.pop("outputs")
            outs = [o for o, buf in zip(fresh, static_grad_outputs, strict=True) if buf is not None]
            got = iter(grads_of(outs, [buf for buf in static_grad_outputs if buf is not None]))
            for t, buf in zip(surface, static_grad_inputs, strict=True):
                grad = next(got) if t.requires_grad else None
                if buf is not None:
                    buf.copy_(grad) if grad is not None else buf.zero_()
            return tuple(b.detach() if b is not None else None for b in static_grad_inputs)

    def functionalized(*user_args: Any) -> Any:
        out = Graphed.apply(*arg_tree_leaves(*user_args), *params)
        return tree_unflatten(list(out), spec)

    training = module.training

    def new_forward(*user_args: Any) -> Any:  # torch: the graph only in the training state it captured
        return functionalized(*user_args) if module.training == training else original_forward(*user_args)

    module.forward = new_forward
    return module


def emulate_make_graphed_callables(monkeypatch: Any, fail: BaseException | None = None) -> list[tuple]:
    """``torch.cuda.make_graphed_callables`` replaced by :func:`make_graphed_callables_on_the_cpu` (and
    ``graph_pool_handle`` by a token); returns the calls' ``(pool, num_warmup_iters, capture_error_mode)``."""
    calls: list[tuple] = []

    def fake(
        module,
        sample_args,
        num_warmup_iters=3,
        allow_unused_input=False,
        pool=None,
        capture_error_mode="global",
    ):
        calls.append((pool, num_warmup_iters, capture_error_mode))
        assert not any(t.requires_grad for t in sample_args), "the step's inputs need no gradient"
        return make_graphed_callables_on_the_cpu(
            module, sample_args, num_warmup_iters, allow_unused_input, pool, capture_error_mode, fail=fail
        )

    fake_pool: Callable[[], tuple] = lambda: ("pool", 1)  # noqa: E731
    monkeypatch.setattr(torch.cuda, "make_graphed_callables", fake)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", fake_pool)
    return calls


def record_by_rerunning(holder: Any, run: Callable[[], Any]) -> tuple[Any, Any]:
    """``GraphHolder._record`` on the CPU (the no-grad captures: the history pass, inference frames): the
    capture's run makes the output buffers; a replay re-runs ``run`` and copies its results into them."""
    buffers = run()

    class Replay:
        def replay(self) -> None:
            for buf, new in zip(tree_leaves(buffers), tree_leaves(run()), strict=True):
                buf.copy_(new)

    return Replay(), buffers


def emulate_training_graphs(monkeypatch: Any, fail: BaseException | None = None) -> list[tuple]:
    """Both training graphs on the CPU: every training frame replayable, ``FrameGraph``'s capture by
    :func:`make_graphed_callables_on_the_cpu` (raising ``fail`` after its warm-up when given) and
    ``HistoryGraph``'s by :func:`record_by_rerunning`. Returns the frame captures' calls."""
    from bevforge.models.frame_graph import FrameGraph
    from bevforge.models.history_graph import HistoryGraph

    monkeypatch.setattr(FrameGraph, "_replayable", staticmethod(lambda tensors, model: model.training))
    monkeypatch.setattr(HistoryGraph, "_replayable", staticmethod(lambda inputs: True))
    monkeypatch.setattr(HistoryGraph, "_record", record_by_rerunning)
    return emulate_make_graphed_callables(monkeypatch, fail=fail)
