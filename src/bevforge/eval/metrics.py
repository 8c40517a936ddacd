"""Vectorised nuScenes detection metrics, equal to nuscenes-devkit 1.2.0 ``DetectionEval``.

Same steps and the same floating-point formulas as the devkit (``loaders.filter_eval_boxes``,
``algo.accumulate`` / ``calc_ap`` / ``calc_tp``, ``DetectionMetrics``), but on flat arrays:

- filtering: xy distance to the sample's LIDAR_TOP ego pose ``>= class_range`` dropped, ``num_pts == 0``
  dropped (predictions carry -1), bicycle/motorcycle centres inside a bicycle-rack box dropped;
- matching: per class, predictions sorted by score (ties: later box first, like the devkit's
  ``sorted(...)[::-1]``), each takes the closest untaken GT of its sample if closer than the threshold.
  The greedy loop runs over the *rank inside a sample* (all samples at once), all 4 thresholds together;
  distances within 1e-9 of a threshold or of a tie are recomputed with the devkit's exact formula;
- AP: 101-point interpolation, min_recall = min_precision = 0.1; TP errors averaged from min recall to
  the max recall reached; traffic_cone attr/vel/orient and barrier attr/vel are NaN; barrier yaw mod pi.

Shape letters: P predictions of a class, G ground-truth boxes of a class, R samples holding GT of a
class (rows), K the padded GT count per row, T distance thresholds, E = 101 recall points.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bevforge.eval.box_table import CLASS_INDEX, DETECTION_NAMES, BoxTable, GroundTruth, quaternion_yaw

TP_METRICS: tuple[str, ...] = ("trans_err", "scale_err", "orient_err", "vel_err", "attr_err")
NELEM = 101  # recall points
_CHUNK = 65536  # predictions per block when computing distances to all GT of their sample


def _cvpr_2019_ranges() -> dict[str, float]:
    return {
        "car": 50,
        "truck": 50,
        "bus": 50,
        "trailer": 50,
        "construction_vehicle": 50,
        "pedestrian": 40,
        "motorcycle": 40,
        "bicycle": 40,
        "traffic_cone": 30,
        "barrier": 30,
    }


@dataclass(frozen=True)
class DetectionEvalConfig:
    """The devkit's ``detection_cvpr_2019`` configuration."""

    class_range: dict[str, float] = field(default_factory=_cvpr_2019_ranges)  # metres, xy from the ego
    dist_fcn: str = "center_distance"
    dist_ths: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)  # metres
    dist_th_tp: float = 2.0
    min_recall: float = 0.1
    min_precision: float = 0.1
    max_boxes_per_sample: int = 500
    mean_ap_weight: int = 5

    def serialize(self) -> dict[str, Any]:
        return {
            "class_range": dict(self.class_range),
            "dist_fcn": self.dist_fcn,
            "dist_ths": list(self.dist_ths),
            "dist_th_tp": self.dist_th_tp,
            "min_recall": self.min_recall,
            "min_precision": self.min_precision,
            "max_boxes_per_sample": self.max_boxes_per_sample,
            "mean_ap_weight": self.mean_ap_weight,
        }


# ------------------------------------------------------------------------------------------ filtering


def _rack_frames(center: np.ndarray, wlh: np.ndarray, rot: np.ndarray) -> tuple[np.ndarray, ...]:
    """[B] boxes -> ``points_in_box`` frame: corner p1 [B, 3], edges i/j/k [B, 3, 3], |edge|^2 [B, 3]."""
    from bevforge.eval.box_table import rotation_matrices

    w, l, h = wlh[:, 0] / 2, wlh[:, 1] / 2, wlh[:, 2] / 2
    r = rotation_matrices(rot)  # [B, 3, 3]
    # corners 0 (+l,+w,+h), 4 (-l,+w,+h), 1 (+l,-w,+h), 3 (+l,+w,-h) in the box frame
    local = np.stack(
        [
            np.stack([l, w, h], -1),
            np.stack([-l, w, h], -1),
            np.stack([l, -w, h], -1),
            np.stack([l, w, -h], -1),
        ],
        axis=1,
    )  # [B, 4, 3]
    corners = np.einsum("bij,bkj->bki", r, local) + center[:, None, :]  # [B, 4, 3]
    p1 = corners[:, 0]  # [B, 3]
    axes = corners[:, 1:] - p1[:, None, :]  # [B, 3, 3]
    return p1, axes, np.einsum("bkj,bkj->bk", axes, axes)


def _in_any_rack(points: np.ndarray, point_sample: np.ndarray, racks: BoxTable) -> np.ndarray:
    """[M] bool: point inside some bicycle rack of its own sample (all pairs at once)."""
    inside = np.zeros(len(points), dtype=bool)
    if len(racks) == 0 or len(points) == 0:
        return inside
    p1, axes, lim = _rack_frames(racks.translation, racks.size, racks.rotation)
    rack_order = np.argsort(racks.sample_idx, kind="stable")
    rs = racks.sample_idx[rack_order]
    lo, hi = np.searchsorted(rs, point_sample, "left"), np.searchsorted(rs, point_sample, "right")
    n_pairs = hi - lo  # racks per point
    pt = np.repeat(np.arange(len(points)), n_pairs)  # [Pairs]
    offs = np.arange(len(pt)) - np.repeat(np.cumsum(n_pairs) - n_pairs, n_pairs)
    rk = rack_order[np.repeat(lo, n_pairs) + offs]  # [Pairs]
    v = points[pt] - p1[rk]  # [Pairs, 3]
    proj = np.einsum("pj,pkj->pk", v, axes[rk])  # [Pairs, 3]
    hit = np.all((proj >= 0) & (proj <= lim[rk]), axis=1)
    np.logical_or.at(inside, pt[hit], True)
    return inside


def filter_mask(boxes: BoxTable, gt: GroundTruth, class_range: dict[str, float]) -> np.ndarray:
    """[N] bool: the boxes the devkit's ``filter_eval_boxes`` keeps (distance, points, bike racks)."""
    ego = gt.ego_xyz[boxes.sample_idx]  # [N, 3]
    dx = boxes.translation[:, 0] - ego[:, 0]
    dy = boxes.translation[:, 1] - ego[:, 1]
    dist = np.sqrt(dx**2 + dy**2)
    ranges = np.array([class_range[n] for n in DETECTION_NAMES], dtype=np.float64)
    keep = (dist < ranges[boxes.label]) & (boxes.num_pts != 0)
    cycles = np.nonzero(keep & np.isin(boxes.label, [CLASS_INDEX["bicycle"], CLASS_INDEX["motorcycle"]]))[0]
    keep[cycles] &= ~_in_any_rack(boxes.translation[cycles], boxes.sample_idx[cycles], gt.racks)
    return keep


# ------------------------------------------------------------------------------------------ matching


def _exact_center_distance(pred_xy: np.ndarray, gt_xy: np.ndarray) -> float:
    """The devkit's ``center_distance`` for one pair (BLAS dot inside ``np.linalg.norm``)."""
    return float(np.linalg.norm(np.array(pred_xy[:2]) - np.array(gt_xy[:2])))


def _sorted_order(score: np.ndarray) -> np.ndarray:
    """Descending score; equal scores: higher original index first (devkit ``sorted(...)[::-1]``)."""
    n = score.shape[0]
    return np.lexsort((-np.arange(n), -score))


def greedy_match(
    pred_xy: np.ndarray,
    pred_sample: np.ndarray,
    pred_score: np.ndarray,
    gt_xy: np.ndarray,
    gt_sample: np.ndarray,
    dist_ths: tuple[float, ...],
) -> tuple[np.ndarray, np.ndarray]:
    """Devkit ``accumulate`` matching of one class for all thresholds at once.

    Returns ``order`` [P] (predictions in processing order) and ``match`` [T, P] (index into the GT
    arrays of the match of ``order[p]``, -1 = false positive).
    """
    num_t, num_p = len(dist_ths), pred_xy.shape[0]
    order = _sorted_order(pred_score)
    match = np.full((num_t, num_p), -1, dtype=np.int64)
    if num_p == 0 or gt_xy.shape[0] == 0:
        return order, match
    # GT padded per sample row: [R, K]
    rows_samples, gt_row = np.unique(gt_sample, return_inverse=True)
    gorder = np.argsort(gt_row, kind="stable")
    counts = np.bincount(gt_row, minlength=len(rows_samples))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    k_max = int(counts.max())
    slot = np.arange(len(gorder)) - starts[gt_row[gorder]]
    pad_xy = np.zeros((len(rows_samples), k_max, 2))  # [R, K, 2]
    pad_idx = np.full((len(rows_samples), k_max), -1, dtype=np.int64)  # [R, K]
    pad_xy[gt_row[gorder], slot] = gt_xy[gorder]
    pad_idx[gt_row[gorder], slot] = gorder
    taken = np.broadcast_to(pad_idx < 0, (num_t, *pad_idx.shape)).copy()  # [T, R, K] padding = taken
    # row of each sorted prediction's sample (-1: no GT of this class there), rank inside its sample
    s_sorted = pred_sample[order]
    pos = np.minimum(np.searchsorted(rows_samples, s_sorted), len(rows_samples) - 1)
    p_row = np.where(rows_samples[pos] == s_sorted, pos, -1)  # [P]
    ths = np.asarray(dist_ths, dtype=np.float64)
    # Only predictions closer than the largest threshold to some GT of their sample can match; the others
    # are false positives at every threshold and change no state, so the greedy loop skips them.
    cand = np.nonzero(p_row >= 0)[0]
    min_dist = np.full(num_p, np.inf)
    for c0 in range(0, len(cand), _CHUNK):
        c = cand[c0 : c0 + _CHUNK]
        diff = pred_xy[order[c]][:, None, :] - pad_xy[p_row[c]]  # [C, K, 2]
        d = np.sqrt(diff[..., 0] ** 2 + diff[..., 1] ** 2)  # [C, K]
        d[pad_idx[p_row[c]] < 0] = np.inf
        min_dist[c] = d.min(axis=1)
    relevant = cand[min_dist[cand] < ths.max() + 1e-6]  # increasing = processing order
    if relevant.size == 0:
        return order, match
    by_row = np.argsort(p_row[relevant], kind="stable")  # [V] grouped by row, processing order inside
    _, first, cnt = np.unique(p_row[relevant][by_row], return_index=True, return_counts=True)
    rank = np.empty(relevant.size, dtype=np.int64)
    rank[by_row] = np.arange(relevant.size) - np.repeat(first, cnt)
    by_rank = relevant[np.argsort(rank, kind="stable")]
    bounds = np.searchsorted(np.sort(rank), np.arange(rank.max() + 2))
    for r in range(len(bounds) - 1):
        sel = by_rank[bounds[r] : bounds[r + 1]]  # sorted positions with rank r (one per row)
        if sel.size == 0:
            continue
        rows = p_row[sel]
        pxy = pred_xy[order[sel]]  # [A, 2]
        diff = pxy[:, None, :] - pad_xy[rows]  # [A, K, 2]
        dist = np.sqrt(diff[..., 0] ** 2 + diff[..., 1] ** 2)  # [A, K]
        for t in range(num_t):
            dm = np.where(taken[t, rows], np.inf, dist)  # [A, K]
            j = np.argmin(dm, axis=1)
            dmin = dm[np.arange(sel.size), j]
            near = (np.abs(dmin - ths[t]) <= 1e-9 * (1 + ths[t])) | (
                np.sum(dm <= dmin[:, None] + 1e-9, axis=1) > 1
            )
            for a in np.nonzero(near & np.isfinite(dmin))[0]:  # recompute exactly like the devkit
                exact = [
                    _exact_center_distance(pxy[a], pad_xy[rows[a], k]) if not taken[t, rows[a], k] else np.inf
                    for k in range(k_max)
                ]
                j[a] = int(np.argmin(exact))
                dmin[a] = exact[j[a]]
            ok = dmin < ths[t]
            taken[t, rows[ok], j[ok]] = True
            match[t, sel[ok]] = pad_idx[rows[ok], j[ok]]
    return order, match


# ------------------------------------------------------------------------------------------ metric data


def _cummean(x: np.ndarray) -> np.ndarray:
    if np.sum(np.isnan(x)) == len(x):
        return np.ones(len(x))
    sum_vals = np.nancumsum(x.astype(float))
    count_vals = np.cumsum(~np.isnan(x))
    return np.divide(sum_vals, count_vals, out=np.zeros_like(sum_vals), where=count_vals != 0)


def no_predictions() -> dict[str, np.ndarray]:
    ones = np.ones(NELEM)
    return {
        "recall": np.linspace(0, 1, NELEM),
        "precision": np.zeros(NELEM),
        "confidence": np.zeros(NELEM),
        **{m: ones.copy() for m in TP_METRICS},
    }


def angle_diff(x: np.ndarray, y: np.ndarray, period: float) -> np.ndarray:
    """Signed smallest difference x - y modulo ``period``, in (-pi, pi] (devkit ``angle_diff``)."""
    diff = (x - y + period / 2) % period - period / 2
    return np.where(diff > np.pi, diff - 2 * np.pi, diff)


def by_class(boxes: BoxTable, keep: np.ndarray | None = None) -> list[BoxTable]:
    """The (kept) boxes of each class of ``DETECTION_NAMES``, original order inside a class.

    One stable sort and one gather instead of a boolean selection per class.
    """
    index = np.arange(len(boxes)) if keep is None else np.flatnonzero(keep)
    index = index[np.argsort(boxes.label[index], kind="stable")]  # [K] grouped by class, order kept
    grouped = boxes.select(index)
    bounds = np.searchsorted(grouped.label, np.arange(len(DETECTION_NAMES) + 1))  # [classes + 1]
    return [grouped.select(slice(bounds[c], bounds[c + 1])) for c in range(len(DETECTION_NAMES))]


def class_metric_data(
    p: BoxTable, g: BoxTable, class_name: str, dist_ths: tuple[float, ...]
) -> list[dict[str, np.ndarray]]:
    """Devkit ``accumulate`` for one class and every threshold: the interpolated curves (E = 101).

    ``p`` / ``g``: the predictions / ground truth of this class (e.g. from :func:`by_class`).
    """
    npos = len(g)
    if npos == 0:
        return [no_predictions() for _ in dist_ths]
    order, match = greedy_match(
        p.translation[:, :2], p.sample_idx, p.score, g.translation[:, :2], g.sample_idx, dist_ths
    )
    conf_all = p.score[order]
    yaw_p, yaw_g = quaternion_yaw(p.rotation), quaternion_yaw(g.rotation)
    period = np.pi if class_name == "barrier" else 2 * np.pi
    out = []
    for t in range(len(dist_ths)):
        is_tp = match[t] >= 0  # [P]
        if not is_tp.any():
            out.append(no_predictions())
            continue
        tp = np.cumsum(is_tp.astype(np.int64)).astype(float)
        fp = np.cumsum((~is_tp).astype(np.int64)).astype(float)
        prec = tp / (fp + tp)
        rec = tp / float(npos)
        rec_interp = np.linspace(0, 1, NELEM)
        prec_i = np.interp(rec_interp, rec, prec, right=0)
        conf_i = np.interp(rec_interp, rec, conf_all, right=0)
        pi, gi = order[is_tp], match[t][is_tp]  # matched pairs in processing order
        d = p.translation[pi, :2] - g.translation[gi, :2]
        dv = p.velocity[pi] - g.velocity[gi]
        sa, sr = g.size[gi], p.size[pi]
        mn = np.minimum(sa, sr)
        inter = mn[:, 0] * mn[:, 1] * mn[:, 2]
        union = sa[:, 0] * sa[:, 1] * sa[:, 2] + sr[:, 0] * sr[:, 1] * sr[:, 2] - inter
        gattr, pattr = g.attr[gi], p.attr[pi]
        acc = np.where(gattr < 0, np.nan, (gattr == pattr).astype(float))
        errs = {
            "trans_err": np.sqrt(d[:, 0] ** 2 + d[:, 1] ** 2),
            "vel_err": np.sqrt(dv[:, 0] ** 2 + dv[:, 1] ** 2),
            "scale_err": 1 - inter / union,
            "orient_err": np.abs(angle_diff(yaw_g[gi], yaw_p[pi], period)),
            "attr_err": 1 - acc,
        }
        mconf = p.score[pi]
        md = {"recall": rec_interp, "precision": prec_i, "confidence": conf_i}
        for key, vals in errs.items():
            tmp = _cummean(vals)
            md[key] = np.interp(conf_i[::-1], mconf[::-1], tmp[::-1])[::-1]
        out.append(md)
    return out


def calc_ap(md: dict[str, np.ndarray], min_recall: float, min_precision: float) -> float:
    prec = np.copy(md["precision"])[round(100 * min_recall) + 1 :]
    prec -= min_precision
    prec[prec < 0] = 0
    return float(np.mean(prec)) / (1.0 - min_precision)


def calc_tp(md: dict[str, np.ndarray], min_recall: float, metric_name: str) -> float:
    first_ind = round(100 * min_recall) + 1
    non_zero = np.nonzero(md["confidence"])[0]
    last_ind = non_zero[-1] if len(non_zero) else 0
    if last_ind < first_ind:
        return 1.0
    return float(np.mean(md[metric_name][first_ind : last_ind + 1]))


# ------------------------------------------------------------------------------------------ summary


def detection_metrics(
    gt: GroundTruth, preds: BoxTable, cfg: DetectionEvalConfig | None = None, filtered: bool = False
) -> dict[str, Any]:
    """All nuScenes detection metrics, laid out like the devkit's ``metrics_summary.json``.

    ``preds.sample_idx`` indexes ``gt.sample_tokens`` (see ``nuscenes_det.parse_submission``).
    ``filtered=True`` skips the range/points/bike-rack filtering (already done).
    """
    cfg = cfg or DetectionEvalConfig()
    start = time.time()
    keep_p = None if filtered else filter_mask(preds, gt, cfg.class_range)
    keep_g = None if filtered else filter_mask(gt.boxes, gt, cfg.class_range)
    preds_of, gt_of = by_class(preds, keep_p), by_class(gt.boxes, keep_g)
    label_aps: dict[str, dict[float, float]] = {}
    label_tp: dict[str, dict[str, float]] = {}
    for c, name in enumerate(DETECTION_NAMES):
        mds = class_metric_data(preds_of[c], gt_of[c], name, cfg.dist_ths)
        label_aps[name] = {
            th: calc_ap(md, cfg.min_recall, cfg.min_precision) for th, md in zip(cfg.dist_ths, mds)
        }
        md_tp = mds[list(cfg.dist_ths).index(cfg.dist_th_tp)]
        label_tp[name] = {}
        for metric in TP_METRICS:
            if (name == "traffic_cone" and metric in ("attr_err", "vel_err", "orient_err")) or (
                name == "barrier" and metric in ("attr_err", "vel_err")
            ):
                label_tp[name][metric] = float("nan")
            else:
                label_tp[name][metric] = calc_tp(md_tp, cfg.min_recall, metric)
    return summarize(label_aps, label_tp, cfg, time.time() - start)


def summarize(
    label_aps: dict[str, dict[float, float]],
    label_tp: dict[str, dict[str, float]],
    cfg: DetectionEvalConfig,
    eval_time: float,
) -> dict[str, Any]:
    """mAP, mean TP errors, TP scores and NDS exactly as ``DetectionMetrics`` computes them."""
    mean_dist_aps = {c: float(np.mean(list(d.values()))) for c, d in label_aps.items()}
    mean_ap = float(np.mean(list(mean_dist_aps.values())))
    tp_errors = {m: float(np.nanmean([label_tp[c][m] for c in DETECTION_NAMES])) for m in TP_METRICS}
    tp_scores = {m: max(0.0, 1.0 - tp_errors[m]) for m in TP_METRICS}
    nds = float(cfg.mean_ap_weight * mean_ap + np.sum(list(tp_scores.values())))
    nds = nds / float(cfg.mean_ap_weight + len(tp_scores))
    return {
        "label_aps": label_aps,
        "mean_dist_aps": mean_dist_aps,
        "mean_ap": mean_ap,
        "label_tp_errors": label_tp,
        "tp_errors": tp_errors,
        "tp_scores": tp_scores,
        "nd_score": nds,
        "eval_time": eval_time,
        "cfg": cfg.serialize(),
    }
