"""The matcher builds only each sample's cost block ``[D, B, Q, M_max]`` and matches like a per-sample,
per-layer reference (cdist over the sample's own class GT + scipy), indices into ``torch.cat(gt_boxes)``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

import bevforge.losses.matcher as matcher_module
from bevforge.losses.matcher import HungarianMatcher
from bevforge.structures.boxes import encode_box_code

D, B, Q, K = 2, 3, 20, 10
SIZES = [(0, 27, 6), (7, 7, 3), (25, 0, 1)]  # an empty sample, M_b > Q, equal sizes (swaps show)


def make_case(sizes: tuple[int, ...], seed: int, num_classes: int | None):
    gen = torch.Generator().manual_seed(seed)
    boxes, labels = [], []
    for m in sizes:
        centre = torch.rand(m, 3, generator=gen) * 10 - 5
        size = torch.rand(m, 3, generator=gen) * 3 + 0.5
        rest = torch.cat([torch.rand(m, 1, generator=gen) * 6 - 3, torch.randn(m, 2, generator=gen)], dim=1)
        boxes.append(torch.cat([centre, size, rest], dim=1))  # [M, 9]
        if num_classes is None:
            labels.append(torch.randint(0, K, (m,), generator=gen))
        else:  # some rows are not detection classes: negative, in [num_classes, K) and beyond K
            labels.append(torch.randint(-2, K + 3, (m,), generator=gen))
    cls = torch.randn(D, len(sizes), Q, K, generator=gen) * 2
    centre = torch.rand(D, len(sizes), Q, 3, generator=gen) * 10 - 5
    size = torch.rand(D, len(sizes), Q, 3, generator=gen) * 3 + 0.5
    rest = torch.cat(
        [
            torch.rand(D, len(sizes), Q, 1, generator=gen) * 6 - 3,
            torch.randn(D, len(sizes), Q, 2, generator=gen),
        ],
        dim=-1,
    )
    code = encode_box_code(torch.cat([centre, size, rest], dim=-1))  # [D, B, Q, 10]
    return cls, code, boxes, labels


def reference_cost(cls: torch.Tensor, code: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor):
    """One layer, one sample: ``cls [Q, K]``, ``code [Q, 10]``, ``boxes [M, 9]``, ``labels [M]`` -> [Q, M]."""
    eps = 1e-12
    p = cls.float().sigmoid()
    pos = -(p + eps).log() * 0.25 * (1 - p) ** 2
    neg = -(1 - p + eps).log() * 0.75 * p**2
    gt8 = encode_box_code(boxes.float())[:, :8]
    cost = 2.0 * (pos - neg)[:, labels] + 0.25 * torch.cdist(code[:, :8].float(), gt8, p=1)  # [Q, M]
    return torch.nan_to_num(cost, nan=100.0, posinf=100.0, neginf=-100.0)


def reference_match(cls, code, boxes, labels, num_classes):
    """Per layer, per sample, over the sample's own class GT only -> ``[D, 3, P]``."""
    starts = np.cumsum([0, *(len(lab) for lab in labels)])
    layers = []
    for d in range(cls.shape[0]):
        rows_all = [np.zeros((3, 0), dtype=np.int64)]
        for b in range(cls.shape[1]):
            lab = labels[b]
            keep = (
                torch.ones_like(lab, dtype=torch.bool)
                if num_classes is None
                else (lab >= 0) & (lab < num_classes)
            )
            kept = torch.nonzero(keep).flatten()  # [M_kept] rows within the sample
            if kept.numel() == 0:
                continue
            cost = reference_cost(cls[d, b], code[d, b], boxes[b][kept], lab[kept].clamp(0, K - 1))
            rows, cols = linear_sum_assignment(cost.numpy())
            rows_all.append(np.stack([np.full_like(rows, b), rows, kept.numpy()[cols] + starts[b]]))
        layers.append(np.concatenate(rows_all, axis=1))
    return torch.as_tensor(np.stack(layers).astype(np.int64))  # [D, 3, P]


@pytest.mark.parametrize("sizes", SIZES)
@pytest.mark.parametrize("num_classes", [None, K, K - 2])
def test_match_layers_equals_per_sample_reference(sizes, num_classes):
    cls, code, boxes, labels = make_case(sizes, seed=sum(sizes), num_classes=num_classes)
    got = HungarianMatcher().match_layers(cls, code, boxes, labels, num_classes)  # [D, 3, P]
    want = reference_match(cls, code, boxes, labels, num_classes)
    assert got.dtype == torch.int64 and got.shape == want.shape
    assert torch.equal(got, want)


def test_only_per_sample_blocks_go_to_the_host(monkeypatch):
    sizes = (0, 27, 6)
    cls, code, boxes, labels = make_case(sizes, seed=1, num_classes=K)
    sent: list[torch.Tensor] = []
    real = matcher_module._to_host

    def spy(tensors):
        sent.extend(t.clone() for t in tensors)
        return real(tensors)

    monkeypatch.setattr(matcher_module, "_to_host", spy)
    HungarianMatcher().match_layers(cls, code, boxes, labels, K)
    cost, host_labels = sent  # one transfer: the cost blocks and the labels
    assert cost.shape == (D, B, Q, max(sizes)) and cost.dtype == torch.float32
    assert torch.equal(host_labels, torch.cat(labels))
    for d in range(D):  # block b holds sample b's queries against sample b's GT (non-class: class 0 clamp)
        for b, m in enumerate(sizes):
            want = reference_cost(cls[d, b], code[d, b], boxes[b], labels[b].clamp(0, K - 1))  # [Q, M_b]
            torch.testing.assert_close(cost[d, b, :, :m], want, rtol=1e-6, atol=1e-5)


def test_cost_is_blockwise_for_any_leading_dims():
    cls, code, boxes, labels = make_case((4, 2, 3), seed=3, num_classes=None)
    m_max = 4
    pad_code = torch.zeros(B, m_max, 10)
    pad_labels = torch.zeros(B, m_max, dtype=torch.long)
    for b, (bx, lab) in enumerate(zip(boxes, labels)):
        pad_code[b, : len(bx)] = encode_box_code(bx)
        pad_labels[b, : len(lab)] = lab
    matcher = HungarianMatcher()
    cost = matcher.cost(cls, code, pad_labels, pad_code)  # [D, B, Q, M_max]
    assert cost.shape == (D, B, Q, m_max)
    one_layer = matcher.cost(cls[1], code[1], pad_labels, pad_code)  # [B, Q, M_max]
    assert torch.equal(one_layer, cost[1])
    for b, (bx, lab) in enumerate(zip(boxes, labels)):
        want = reference_cost(cls[1, b], code[1, b], bx, lab)
        torch.testing.assert_close(cost[1, b, :, : len(bx)], want, rtol=1e-6, atol=1e-5)


def test_call_gives_indices_within_each_sample():
    sizes = (7, 7, 3)
    cls, code, boxes, labels = make_case(sizes, seed=4, num_classes=None)
    want = reference_match(cls[1:], code[1:], boxes, labels, None)[0]  # [3, P]
    starts = np.cumsum([0, *sizes])
    out = HungarianMatcher()(cls[1], code[1], boxes, labels)
    for b, (q, g) in enumerate(out):
        sel = want[0] == b
        assert torch.equal(q, want[1][sel]) and torch.equal(g, want[2][sel] - int(starts[b]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("num_classes", [None, K])
def test_cuda_pinned_path_matches_cpu(num_classes):
    cls, code, boxes, labels = make_case((0, 27, 6), seed=5, num_classes=num_classes)
    matcher = HungarianMatcher()
    want = matcher.match_layers(cls, code, boxes, labels, num_classes)
    got = matcher.match_layers(
        cls.cuda(), code.cuda(), [b.cuda() for b in boxes], [lab.cuda() for lab in labels], num_classes
    )
    assert got.is_cuda and torch.equal(got.cpu(), want)
