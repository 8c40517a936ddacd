"""``build_centerpoint_criterion(cfg)``: BEVDet's CenterPoint losses from ``cfg.model.bevdet``."""

from __future__ import annotations

from bevforge.config import Config, ConfigError
from bevforge.losses.centerpoint import CenterPointCriterion
from bevforge.models.centerpoint_head import resolve_tasks
from bevforge.nn.lss import depth_bin_centres


def build_centerpoint_criterion(cfg: Config) -> CenterPointCriterion:
    """The criterion for ``model.arch == "bevdet"`` (same task groups as ``build_centerpoint_head``)."""
    b, d = cfg.model.bevdet, cfg.data
    if len(d.point_cloud_range) != 6:
        raise ConfigError(f"data.point_cloud_range needs 6 values, got {d.point_cloud_range}")
    if len(b.head_code_weights) != 10:
        raise ConfigError(
            f"model.bevdet.head_code_weights has {len(b.head_code_weights)} values; give 10 "
            "(reg x, reg y, z, log l, log w, log h, sin, cos, vx, vy)"
        )
    if b.min_radius < 0 or b.max_objs < 1 or not 0 < b.gaussian_overlap < 1:
        raise ConfigError(
            f"model.bevdet: min_radius ({b.min_radius}) >= 0, max_objs ({b.max_objs}) >= 1 and "
            f"0 < gaussian_overlap ({b.gaussian_overlap}) < 1 are required"
        )
    if b.depth_loss_weight < 0:
        raise ConfigError(f"model.bevdet.depth_loss_weight={b.depth_loss_weight}: give >= 0 (0 = off)")
    return CenterPointCriterion(
        tasks=resolve_tasks(tuple(b.head_tasks), tuple(d.classes)),
        pc_range=tuple(d.point_cloud_range),
        gaussian_overlap=b.gaussian_overlap,
        min_radius=b.min_radius,
        max_objs=b.max_objs,
        heatmap_weight=b.heatmap_weight,
        bbox_weight=b.bbox_weight,
        code_weights=tuple(b.head_code_weights),
        depth_weight=b.depth_loss_weight,
        depth_bins_m=depth_bin_centres(tuple(b.depth_bins)) if b.depth_loss_weight > 0 else None,
    )
