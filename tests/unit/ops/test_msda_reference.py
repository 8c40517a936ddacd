"""The MSDA reference against a naive per-point bilinear loop in fp64."""

import torch

from bevforge.ops.msda import msda_reference


def naive_msda(value, shapes, locs, weights):
    B, S, M, D = value.shape
    _, Q, _, L, P, _ = locs.shape
    out = torch.zeros(B, Q, M, D, dtype=value.dtype)
    starts = [0]
    for h, w in shapes[:-1]:
        starts.append(starts[-1] + h * w)
    for b in range(B):
        for q in range(Q):
            for m in range(M):
                for lvl, (h, w) in enumerate(shapes):
                    fmap = value[b, starts[lvl] : starts[lvl] + h * w, m].view(h, w, D)
                    for p in range(P):
                        x = locs[b, q, m, lvl, p, 0] * w - 0.5
                        y = locs[b, q, m, lvl, p, 1] * h - 0.5
                        x0, y0 = int(torch.floor(x)), int(torch.floor(y))
                        acc = torch.zeros(D, dtype=value.dtype)
                        for dy in (0, 1):
                            for dx in (0, 1):
                                xi, yi = x0 + dx, y0 + dy
                                if 0 <= xi < w and 0 <= yi < h:
                                    wt = (1 - abs(x - xi)) * (1 - abs(y - yi))
                                    acc += wt * fmap[yi, xi]
                        out[b, q, m] += weights[b, q, m, lvl, p] * acc
    return out.view(B, Q, M * D)


def test_reference_matches_naive_loop_fp64():
    torch.manual_seed(0)
    shapes = [(5, 7), (3, 4), (1, 2)]
    B, M, D, Q, P = 2, 2, 3, 4, 3
    S = sum(h * w for h, w in shapes)
    value = torch.randn(B, S, M, D, dtype=torch.float64)
    locs = torch.rand(B, Q, M, len(shapes), P, 2, dtype=torch.float64) * 1.4 - 0.2  # some out of range
    weights = torch.rand(B, Q, M, len(shapes), P, dtype=torch.float64)
    spatial = torch.tensor(shapes, dtype=torch.long)
    start = torch.cat([spatial.new_zeros(1), (spatial[:, 0] * spatial[:, 1]).cumsum(0)[:-1]])
    got = msda_reference(value, spatial, start, locs, weights)
    want = naive_msda(value, shapes, locs, weights)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
