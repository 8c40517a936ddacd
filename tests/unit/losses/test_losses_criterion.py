import math

import torch
import torch.nn.functional as F

from bevforge.config import Config
from bevforge.losses.build import build_criterion
from bevforge.losses.criterion import SetCriterion
from bevforge.losses.focal import sigmoid_focal_loss
from bevforge.losses.matcher import HungarianMatcher
from bevforge.structures.boxes import encode_box_code


def _gt(m, seed=0):
    g = torch.Generator().manual_seed(seed)
    boxes = torch.cat(
        [
            torch.rand(m, 3, generator=g) * 40 - 20,
            torch.rand(m, 3, generator=g) * 3 + 0.5,
            torch.rand(m, 1, generator=g) * 6 - 3,
            torch.randn(m, 2, generator=g),
        ],
        dim=1,
    )
    labels = torch.randint(0, 10, (m,), generator=g)
    return boxes, labels


def _perfect_preds(gt_boxes, gt_labels, Q=12, K=10, D=2, slots=None):
    """Predictions where query slots[b][j] is GT j with a confident logit; others: far background."""
    B = len(gt_boxes)
    torch.manual_seed(0)
    cls = torch.full((D, B, Q, K), -12.0)
    code = encode_box_code(torch.tensor([[40.0, 40.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]])).repeat(D, B, Q, 1)
    code = code + 0.01 * torch.randn_like(code)
    for b in range(B):
        for j in range(len(gt_boxes[b])):
            q = slots[b][j] if slots else j
            cls[:, b, q, gt_labels[b][j]] = 12.0
            code[:, b, q] = encode_box_code(gt_boxes[b][j])
    return {"cls_logits": cls, "box_code": code}


def test_focal_loss_matches_formula():
    torch.manual_seed(0)
    x = torch.randn(5, 4)
    t = (torch.rand(5, 4) > 0.5).float()
    p = x.sigmoid()
    expect = -(0.25 * t * (1 - p) ** 2 * p.log() + 0.75 * (1 - t) * p**2 * (1 - p).log())
    torch.testing.assert_close(sigmoid_focal_loss(x, t), expect, atol=1e-6, rtol=1e-5)


def test_matcher_finds_the_planted_permutation():
    boxes, labels = _gt(4)
    slots = [[7, 2, 9, 0]]
    preds = _perfect_preds([boxes], [labels], slots=slots)
    ((q, g),) = HungarianMatcher()(preds["cls_logits"][-1], preds["box_code"][-1], [boxes], [labels])
    assert dict(zip(g.tolist(), q.tolist())) == {0: 7, 1: 2, 2: 9, 3: 0}


def test_criterion_perfect_prediction_near_zero_and_keys():
    b0, l0 = _gt(3, seed=1)
    b1, l1 = _gt(5, seed=2)
    crit = SetCriterion()
    losses = crit(_perfect_preds([b0, b1], [l0, l1]), [b0, b1], [l0, l1])
    assert set(losses) == {"loss", "loss_cls", "loss_bbox", "d0.loss_cls", "d0.loss_bbox"}
    assert losses["loss_bbox"] < 1e-6 and losses["loss_cls"] < 1e-3
    total = sum(v for k, v in losses.items() if k != "loss")
    torch.testing.assert_close(losses["loss"], total)


def test_criterion_permutation_invariant():
    boxes, labels = _gt(4, seed=3)
    torch.manual_seed(1)
    preds = {"cls_logits": torch.randn(1, 1, 10, 10), "box_code": torch.randn(1, 1, 10, 10)}
    perm = torch.tensor([2, 0, 3, 1])
    crit = SetCriterion()
    a = crit(preds, [boxes], [labels])
    b = crit(preds, [boxes[perm]], [labels[perm]])
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_criterion_empty_gt_and_label_filter():
    torch.manual_seed(0)
    preds = {"cls_logits": torch.randn(2, 2, 6, 10, requires_grad=True), "box_code": torch.randn(2, 2, 6, 10)}
    empty = torch.zeros(0, 9)
    boxes, labels = _gt(2)
    labels[1] = -1  # not a detection class: dropped
    losses = SetCriterion()(preds, [empty, boxes], [torch.zeros(0, dtype=torch.long), labels])
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    # only one valid GT box: the focal sum is divided by 1
    all_empty = SetCriterion()(preds, [empty, empty], [torch.zeros(0, dtype=torch.long)] * 2)
    assert all_empty["loss_bbox"] == 0
    expect = 2.0 * sigmoid_focal_loss(preds["cls_logits"][-1], torch.zeros(2, 6, 10)).sum()
    torch.testing.assert_close(all_empty["loss_cls"], expect)


def test_criterion_l1_value_and_nan_velocity_masked():
    boxes, labels = _gt(2, seed=4)
    preds = _perfect_preds([boxes], [labels], D=1)
    preds["box_code"][0, 0, 0, 0] += 1.0  # GT 0: 1 m off in x
    preds["box_code"][0, 0, 1, 8] += 1.0  # GT 1: velocity off by 1 (weight 0.2)
    losses = SetCriterion()(preds, [boxes], [labels])
    torch.testing.assert_close(losses["loss_bbox"], torch.tensor(0.25 * (1.0 + 0.2) / 2), atol=1e-4, rtol=0)
    boxes_nan = boxes.clone()
    boxes_nan[1, 7] = math.nan
    losses = SetCriterion()(preds, [boxes_nan], [labels])
    torch.testing.assert_close(losses["loss_bbox"], torch.tensor(0.25 * 1.0 / 2), atol=1e-4, rtol=0)


def test_build_criterion_reads_config_and_seg():
    cfg = Config()
    cfg.model.with_seg = True
    cfg.loss.cls_weight = 3.0
    crit = build_criterion(cfg)
    assert crit.with_seg and crit.cls_weight == 3.0
    torch.manual_seed(0)
    preds = {
        "cls_logits": torch.randn(1, 1, 4, 10),
        "box_code": torch.randn(1, 1, 4, 10),
        "seg_logits": torch.randn(1, 3, 5, 5),
    }
    target = (torch.rand(1, 3, 5, 5) > 0.5).float()
    boxes, labels = _gt(1)
    losses = crit(preds, [boxes], [labels], target)
    assert "loss_seg" in losses
    bce = F.binary_cross_entropy_with_logits(preds["seg_logits"], target)
    assert losses["loss_seg"] > bce


def test_matcher_layers_match_brute_force_optimum():
    import itertools

    boxes, labels = _gt(3, seed=5)
    empty_b, empty_l = torch.zeros(0, 9), torch.zeros(0, dtype=torch.long)
    torch.manual_seed(2)
    cls, code = torch.randn(3, 2, 5, 10), torch.randn(3, 2, 5, 10)
    matcher = HungarianMatcher()
    idx = matcher.match_layers(cls, code, [empty_b, boxes], [empty_l, labels])  # [D, 3, P]
    assert idx.shape == (3, 3, 3) and (idx[:, 0] == 1).all()
    gt_code = encode_box_code(boxes)
    for d in range(3):
        p = cls[d, 1].sigmoid()
        focal = -(p.log() * 0.25 * (1 - p) ** 2) + (1 - p).log() * 0.75 * p**2  # pos - neg, official
        cost = 2.0 * focal[:, labels] + 0.25 * torch.cdist(code[d, 1, :, :8], gt_code[:, :8], p=1)  # [Q, M]
        best = min(
            itertools.permutations(range(5), 3), key=lambda qs: sum(cost[q, j] for j, q in enumerate(qs))
        )
        got = dict(zip(idx[d, 2].tolist(), idx[d, 1].tolist()))
        assert [got[j] for j in range(3)] == list(best)
        _, (q, g) = matcher(cls[d], code[d], [empty_b, boxes], [empty_l, labels])
        assert dict(zip(g.tolist(), q.tolist())) == got


def test_layers_loss_is_each_layer_on_its_own():
    """The decoder layers' losses in one set of operators equal each layer's own (values and gradients),
    a GT box with an unknown velocity and an empty sample included."""
    boxes, labels = _gt(5, seed=3)
    boxes[1, 7:] = float("nan")  # unknown velocity: out of its L1 row
    empty_b, empty_l = torch.zeros(0, 9), torch.zeros(0, dtype=torch.long)
    torch.manual_seed(4)
    cls = torch.randn(4, 2, 9, 10, requires_grad=True)
    code = torch.randn(4, 2, 9, 10, requires_grad=True)
    crit = SetCriterion()
    matches = crit.matcher.match_layers(cls, code, [boxes, empty_b], [labels, empty_l])  # [D, 3, P]
    got_cls, got_bbox = crit.layers_loss(cls, code, matches, boxes, labels)
    assert got_cls.shape == got_bbox.shape == (4,)
    grads = torch.autograd.grad((got_cls * torch.arange(1.0, 5.0)).sum() + got_bbox.sum(), (cls, code))
    for d in range(4):
        want_cls, want_bbox = crit.layer_loss(cls[d], code[d], matches[d], boxes, labels)
        torch.testing.assert_close(got_cls[d], want_cls)
        torch.testing.assert_close(got_bbox[d], want_bbox)
        want = torch.autograd.grad((d + 1) * want_cls + want_bbox, (cls, code))
        torch.testing.assert_close(grads[0][d], want[0][d])
        torch.testing.assert_close(grads[1][d], want[1][d])
    assert torch.isfinite(got_bbox).all() and (got_bbox > 0).all()
