"""``build_criterion(cfg)``: the only place where the losses read the config."""

from __future__ import annotations

from torch import Tensor, nn

from bevforge.config import Config
from bevforge.losses.criterion import SetCriterion
from bevforge.losses.matcher import HungarianMatcher


def build_criterion(cfg: Config) -> nn.Module:
    """The criterion of the model family ``cfg.model.arch`` (``criterion(preds, gt_boxes, gt_labels,
    seg_target) -> dict`` with a scalar ``"loss"``, docs/CONTRACTS.md)."""
    if cfg.model.arch == "bevdet":
        from bevforge.losses.centerpoint_build import build_centerpoint_criterion

        return build_centerpoint_criterion(cfg)
    criterion = build_set_criterion(cfg)
    if cfg.model.aux_heatmap:
        from bevforge.losses.centerpoint_build import build_centerpoint_criterion

        return WithAuxHeatmap(criterion, build_centerpoint_criterion(cfg), cfg.loss.aux_heatmap_weight)
    return criterion


class WithAuxHeatmap(nn.Module):
    """``main`` plus ``weight`` x the CenterPoint loss of the ``aux.*`` predictions (``model.aux_heatmap``);
    the aux terms are logged as ``aux.<term>``. Without ``aux.*`` predictions only ``main`` counts."""

    def __init__(self, main: nn.Module, aux: nn.Module, weight: float) -> None:
        super().__init__()
        self.main, self.aux, self.weight = main, aux, weight

    def forward(
        self,
        preds: dict[str, Tensor],
        gt_boxes: list[Tensor],
        gt_labels: list[Tensor],
        seg_target: Tensor | None = None,
    ) -> dict[str, Tensor]:
        out = self.main(preds, gt_boxes, gt_labels, seg_target)
        aux_preds = {k.removeprefix("aux."): v for k, v in preds.items() if k.startswith("aux.")}
        if aux_preds:
            aux = self.aux(aux_preds, gt_boxes, gt_labels)
            out["loss"] = out["loss"] + self.weight * aux["loss"]
            out.update({f"aux.{k}": v for k, v in aux.items() if k in ("loss_heatmap", "loss_bbox")})
        return out


def build_set_criterion(cfg: Config) -> SetCriterion:
    """BEVFormer's DETR-style criterion (Hungarian matching, focal + L1 on every decoder layer)."""
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
