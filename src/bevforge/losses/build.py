"""``build_criterion(cfg)``: the only place where the losses read the config."""

from __future__ import annotations

from bevforge.config import Config
from bevforge.losses.criterion import SetCriterion
from bevforge.losses.matcher import HungarianMatcher


def build_criterion(cfg: Config) -> SetCriterion:
    loss, model = cfg.loss, cfg.model
    matcher = HungarianMatcher(
        cls_cost=loss.match_cls_cost,
        bbox_cost=loss.match_bbox_cost,
        gamma=loss.focal_gamma,
        alpha=loss.focal_alpha,
    )
    return SetCriterion(
        num_classes=model.num_classes,
        matcher=matcher,
        cls_weight=loss.cls_weight,
        bbox_weight=loss.bbox_weight,
        focal_gamma=loss.focal_gamma,
        focal_alpha=loss.focal_alpha,
        code_weights=tuple(loss.code_weights),
        seg_weight=loss.seg_weight,
        with_det=model.with_det,
        with_seg=model.with_seg,
    )
