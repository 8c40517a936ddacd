import math

import numpy as np
import torch

from bevforge.losses.centerpoint_targets import build_targets, gaussian_radius

PCR = (-8.0, -8.0, -5.0, 8.0, 8.0, 3.0)  # 16 x 16 cells of 1 m


def _radius_reference(h: float, w: float, o: float) -> float:
    """The official scalar formula, written out case by case."""
    b1, c1 = h + w, w * h * (1 - o) / (1 + o)
    r1 = (b1 + math.sqrt(b1**2 - 4 * c1)) / 2
    b2, c2 = 2 * (h + w), (1 - o) * w * h
    r2 = (b2 + math.sqrt(b2**2 - 16 * c2)) / 2
    a3, b3, c3 = 4 * o, -2 * o * (h + w), (o - 1) * w * h
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def _draw_reference(heat: np.ndarray, row: int, col: int, r: int) -> None:
    """Official draw_heatmap_gaussian with a plain loop (max merge, clipped at the borders)."""
    sigma = (2 * r + 1) / 6
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            y, x = row + dy, col + dx
            if 0 <= y < heat.shape[0] and 0 <= x < heat.shape[1]:
                heat[y, x] = max(heat[y, x], math.exp(-(dx * dx + dy * dy) / (2 * sigma * sigma)))


def test_gaussian_radius_matches_the_official_formula():
    h = torch.tensor([5.625, 1.0, 15.0, 0.5])
    w = torch.tensor([2.375, 1.0, 3.75, 0.5])
    got = gaussian_radius(h, w, 0.1)
    for i in range(4):
        assert math.isclose(float(got[i]), _radius_reference(float(h[i]), float(w[i]), 0.1), rel_tol=1e-5)


def test_heatmap_peak_at_centre_cell_with_value_one_and_official_radius():
    torch.manual_seed(0)
    # centre (0.3, -2.6) m -> col floor(8.3) = 8, row floor(5.4) = 5; a 16 m x 6 m box: radius 4 > min
    box = torch.tensor([[0.3, -2.6, 1.0, 16.0, 6.0, 3.5, 0.4, 2.0, -1.0]])
    (tgt,) = build_targets([box], [torch.tensor([0])], ((0,),), PCR, 16, 16, 0.1, 2, 500)
    heat = tgt.heatmap[0, 0]
    r = max(2, int(_radius_reference(16.0, 6.0, 0.1)))
    assert r == 4
    assert heat[5, 8] == 1.0 and heat.eq(1).sum() == 1
    rows = heat.gt(0).any(1).nonzero().flatten()
    cols = heat.gt(0).any(0).nonzero().flatten()
    assert rows.tolist() == list(range(5 - r, min(16, 5 + r + 1)))
    assert cols.tolist() == list(range(8 - r, min(16, 8 + r + 1)))
    assert tgt.index[0, 0] == 5 * 16 + 8 and bool(tgt.mask[0, 0])


def test_heatmap_matches_loop_reference_with_overlaps_and_borders():
    torch.manual_seed(0)
    boxes = torch.tensor(
        [
            [0.5, 0.5, 0.0, 4.0, 2.0, 1.5, 0.0, 0.0, 0.0],
            [1.6, 0.9, 0.0, 4.0, 2.0, 1.5, 1.0, 0.0, 0.0],  # overlaps the first: max merge
            [-7.9, 7.5, 0.0, 9.0, 3.0, 3.0, 0.0, 0.0, 0.0],  # at the border: clipped
            [3.0, -3.0, 0.0, 0.6, 0.6, 1.7, 0.0, 0.0, 0.0],  # class 1 (second channel)
        ]
    )
    labels = torch.tensor([0, 0, 0, 1])
    (tgt,) = build_targets([boxes], [labels], ((0, 1),), PCR, 16, 16, 0.1, 2, 500)
    ref = np.zeros((2, 16, 16))
    for box, lab in zip(boxes.tolist(), labels.tolist(), strict=True):
        col, row = math.floor(box[0] + 8), math.floor(box[1] + 8)
        r = max(2, int(_radius_reference(box[3], box[4], 0.1)))
        _draw_reference(ref[lab], row, col, r)
    np.testing.assert_allclose(tgt.heatmap[0].numpy(), ref, atol=1e-6)


def test_box_code_targets_slots_and_masks():
    torch.manual_seed(0)
    b0 = torch.tensor(
        [
            [0.3, -2.6, 1.0, 4.5, 1.9, 1.6, 0.4, 2.0, -1.0],  # task 0
            [20.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0, 0.0, 0.0],  # task 0, off the grid: no slot used for it
            [-1.2, 3.7, -0.5, 0.7, 0.6, 1.8, -2.0, 0.5, 0.1],  # task 1
            [1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0],  # label 5: in no task, ignored
        ]
    )
    l0 = torch.tensor([0, 0, 2, 5])
    b1 = torch.zeros(0, 9)  # a sample without boxes
    tasks = ((0, 1), (2,))
    t0, t1 = build_targets([b0, b1], [l0, torch.zeros(0, dtype=torch.long)], tasks, PCR, 16, 16)
    assert t0.box_code.shape == (2, 1, 10) and t1.box_code.shape == (2, 1, 10)
    assert t0.mask.tolist() == [[True], [False]] and t1.mask.tolist() == [[True], [False]]
    assert t0.heatmap[1].sum() == 0 and t1.heatmap.shape == (2, 1, 16, 16)
    x, y, z, l, w, h, yaw, vx, vy = b0[0].tolist()
    expected = [x + 8 - 8, y + 8 - 5, z, math.log(l), math.log(w), math.log(h), math.sin(yaw), math.cos(yaw)]
    torch.testing.assert_close(t0.box_code[0, 0], torch.tensor([*expected, vx, vy]), atol=1e-5, rtol=0)
    assert t1.index[0, 0] == math.floor(3.7 + 8) * 16 + math.floor(-1.2 + 8)
    assert t1.heatmap[0, 0].eq(1).sum() == 1


def test_max_objs_caps_the_slots():
    torch.manual_seed(0)
    boxes = torch.rand(7, 9) * 6 - 3
    boxes[:, 3:6] = 1.0
    (tgt,) = build_targets([boxes], [torch.zeros(7, dtype=torch.long)], ((0,),), PCR, 16, 16, max_objs=4)
    assert tgt.mask.shape == (1, 4) and bool(tgt.mask.all())
    assert tgt.heatmap[0, 0].eq(1).sum() >= 4  # every box still draws its Gaussian
