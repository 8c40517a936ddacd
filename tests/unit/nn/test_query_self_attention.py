"""``QuerySelfAttention`` is ``nn.MultiheadAttention(batch_first=True)`` on the decoder's call: same
parameters and init, same outputs and gradients (dropout included), fewer operators."""

from __future__ import annotations

import collections

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from bevforge.nn.self_attention import QuerySelfAttention


class _Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.n = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.n[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def _pair(dropout: float) -> tuple[nn.MultiheadAttention, QuerySelfAttention]:
    torch.manual_seed(0)
    torch_mha = nn.MultiheadAttention(32, 4, dropout=dropout, batch_first=True)
    torch.manual_seed(0)
    lean = QuerySelfAttention(32, 4, dropout)
    return torch_mha, lean


def _run(module: nn.Module, qk: torch.Tensor, value: torch.Tensor, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)  # the same attention-dropout draws
    if isinstance(module, nn.MultiheadAttention):
        return module(qk, qk, value, need_weights=False)[0]
    return module(qk, value)


def test_parameters_names_and_init_match_torch() -> None:
    torch_mha, lean = _pair(0.1)
    assert list(lean.state_dict()) == list(torch_mha.state_dict())
    for (name, a), (_, b) in zip(torch_mha.named_parameters(), lean.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    lean.load_state_dict(torch_mha.state_dict())  # checkpoints load both ways


@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("batch", [1, 3])
def test_outputs_and_gradients_match_torch(dropout: float, batch: int) -> None:
    torch_mha, lean = _pair(dropout)
    g = torch.Generator().manual_seed(1)
    query = torch.randn(batch, 20, 32, generator=g)
    pos = torch.randn(batch, 20, 32, generator=g)
    results = []
    for module in (torch_mha, lean):
        q = query.clone().requires_grad_(True)
        out = _run(module.train(), q + pos, q, seed=5)
        out.square().sum().backward()
        results.append((out, q.grad, [p.grad for p in module.parameters()]))
    (out_a, gq_a, gp_a), (out_b, gq_b, gp_b) = results
    torch.testing.assert_close(out_b, out_a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gq_b, gq_a, rtol=1e-5, atol=1e-5)
    for a, b in zip(gp_a, gp_b, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_eval_has_no_dropout_and_bf16_autocast_matches() -> None:
    torch_mha, lean = _pair(0.5)
    qk, value = torch.randn(2, 16, 32), torch.randn(2, 16, 32)
    torch.testing.assert_close(_run(lean.eval(), qk, value, 1), _run(lean, qk, value, 2))  # deterministic
    with torch.autocast("cpu", torch.bfloat16):
        a = _run(torch_mha.eval(), qk, value, 0)
        b = _run(lean, qk, value, 0)
    assert b.dtype == a.dtype == torch.bfloat16
    torch.testing.assert_close(b.float(), a.float(), rtol=2e-2, atol=2e-2)


def test_fewer_operators_than_torch_under_autocast() -> None:
    """The point of the module: one cast of the packed projection, one GEMM for q and k."""
    torch_mha, lean = _pair(0.0)
    counts = []
    for module in (torch_mha, lean):
        q = torch.randn(2, 16, 32, requires_grad=True)
        with torch.autocast("cpu", torch.bfloat16):
            qk = q + 1.0
            with _Count() as forward:
                out = _run(module.train(), qk, q, 0)
            loss = out.float().sum()
        with _Count() as backward:
            loss.backward()
        counts.append((sum(forward.n.values()), sum(backward.n.values()), forward.n))
    (fwd_a, bwd_a, _), (fwd_b, bwd_b, fwd_ops) = counts
    assert fwd_b < fwd_a and bwd_b < bwd_a, counts
    assert fwd_ops["addmm"] == 3 and fwd_ops["_to_copy"] <= 6, fwd_ops  # inputs 2, packed w + b, out_proj


def test_rejects_indivisible_heads() -> None:
    with pytest.raises(ValueError, match="not divisible"):
        QuerySelfAttention(30, 4)
