"""Non-class GT rows are left out on the host by the matcher: the same losses as filtering them first."""

from __future__ import annotations

import numpy as np
import torch

from bevforge.losses.criterion import SetCriterion
from bevforge.losses.matcher import HungarianMatcher

D, B, Q, K = 2, 3, 9, 10


def make_gt(m: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    centre = torch.rand(m, 3, generator=gen) * 40 - 20
    size = torch.rand(m, 3, generator=gen) * 3 + 0.5
    rest = torch.cat([torch.rand(m, 1, generator=gen) * 6 - 3, torch.randn(m, 2, generator=gen)], dim=1)
    return torch.cat([centre, size, rest], dim=1), torch.randint(0, K, (m,), generator=gen)


def make_case():
    gen = torch.Generator().manual_seed(0)
    boxes, labels = zip(*(make_gt(m, gen) for m in (5, 3, 12)))
    boxes, labels = list(boxes), [lab.clone() for lab in labels]
    labels[0][[1, 3]] = torch.tensor([-1, K])  # not detection classes
    labels[1][:] = -1  # a sample with no class GT at all
    labels[2][0] = K + 3
    torch.manual_seed(0)
    preds = {"cls_logits": torch.randn(D, B, Q, K), "box_code": torch.randn(D, B, Q, 10) * 5}
    return preds, boxes, labels


def test_criterion_skips_non_class_rows_like_a_filter():
    preds, boxes, labels = make_case()
    keep = [(lab >= 0) & (lab < K) for lab in labels]
    filtered_boxes = [b[k] for b, k in zip(boxes, keep)]
    filtered_labels = [lab[k] for lab, k in zip(labels, keep)]
    crit = SetCriterion(num_classes=K)
    got = crit(preds, boxes, labels)
    want = crit(preds, filtered_boxes, filtered_labels)
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key


def test_matcher_indices_point_at_class_rows_of_the_unfiltered_gt():
    preds, boxes, labels = make_case()
    idx = HungarianMatcher().match_layers(
        preds["cls_logits"], preds["box_code"], boxes, labels, K
    )  # [D, 3, P]
    all_labels = torch.cat(labels)
    assert idx.shape == (D, 3, 3 + 0 + min(Q, 11))
    assert ((all_labels[idx[:, 2]] >= 0) & (all_labels[idx[:, 2]] < K)).all()
    starts = np.cumsum([0, 5, 3])
    for d in range(D):  # each GT row lies in its own sample's block
        for b, _q, t in idx[d].T.tolist():
            assert starts[b] <= t < starts[b] + len(labels[b])
        assert len(set(idx[d, 2].tolist())) == idx.shape[2]  # each GT row matched once
