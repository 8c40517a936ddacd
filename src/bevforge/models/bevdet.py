"""BEVDet: image backbone + neck -> LSS view transformer -> BEV backbone + FPN-LSS -> CenterPoint head.

Shape letters: B batch, T frames, N cameras, C channels, H/W padded image size, fH/fW image-feature size,
D depth bins, bev_h/bev_w BEV grid.

``forward(batch, state) -> (preds, state)`` (docs/CONTRACTS.md). Single frame: only the current frame
``T-1`` is used (the BEVDet recipes train with ``queue_length = 1``; older frames of a longer queue are
ignored); ``state`` passes through unchanged (BEVDet keeps no temporal state). ``preds`` are the head's
outputs plus ``bev_feat [B, C_bev, bev_h, bev_w]`` (the encoded BEV) and ``depth [B, N, D, fH, fW]``
(the depth distributions, for a depth loss or visualisation), and ``depth_gt [B, N, fH, fW]`` when the
batch carries lidar depth targets (``Batch.depth_gt``, for the criterion's depth loss).
"""

from __future__ import annotations

import torch
from torch import nn

from bevforge.nn.lss import LSSViewTransformer
from bevforge.structures.batch import Batch, require_finished_images
from bevforge.structures.temporal import TemporalState


class BEVDet(nn.Module):
    def __init__(
        self,
        backbone: nn.Module,
        neck: nn.Module,
        view_transformer: LSSViewTransformer,
        bev_backbone: nn.Module,
        bev_neck: nn.Module,
        head: nn.Module,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck  # the first output level (stride feat_downsample) feeds the depth net
        self.view_transformer = view_transformer
        self.bev_backbone = bev_backbone
        self.bev_neck = bev_neck
        self.head = head

    def extract_features(self, images: torch.Tensor) -> torch.Tensor:
        """``images [B, N, 3, H, W]`` -> ``[B, N, C, fH, fW]`` (one backbone call for every camera)."""
        assert images.dim() == 5, f"expected [B, N, 3, H, W], got {tuple(images.shape)}"
        require_finished_images(images)
        num_b, num_n = images.shape[:2]
        feat = self.neck(self.backbone(images.flatten(0, 1)))[0]  # [B*N, C, fH, fW]
        stride = self.view_transformer.feat_downsample
        if feat.shape[-2] * stride != images.shape[-2] or feat.shape[-1] * stride != images.shape[-1]:
            raise ValueError(
                f"image features {tuple(feat.shape[-2:])} are not the {tuple(images.shape[-2:])} images / "
                f"{stride}: set model.bevdet.feat_downsample to the neck's stride and data.pad_divisor to a "
                f"multiple of it"
            )
        return feat.view(num_b, num_n, *feat.shape[1:])  # [B, N, C, fH, fW]

    def encode_bev(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The current frame -> (``bev_feat [B, C_bev, bev_h, bev_w]``, ``depth [B, N, D, fH, fW]``)."""
        feats = self.extract_features(batch.images[:, -1])  # [B, N, C, fH, fW]
        bev, depth = self.view_transformer(feats, batch.lidar2img[:, -1])  # [B, C_vt, bev_h, bev_w]
        return self.bev_neck(self.bev_backbone(bev)), depth

    def forward(
        self, batch: Batch, state: TemporalState | None = None
    ) -> tuple[dict[str, torch.Tensor], TemporalState | None]:
        """``batch.images [B, T, N, 3, H, W]`` -> (head outputs + ``bev_feat`` + ``depth``, ``state``)."""
        assert batch.images.dim() == 6, f"images must be [B, T, N, 3, H, W], got {tuple(batch.images.shape)}"
        bev_feat, depth = self.encode_bev(batch)
        preds = dict(self.head(bev_feat))
        preds["bev_feat"] = bev_feat
        preds["depth"] = depth
        if batch.depth_gt is not None:  # lidar depth targets (training with depth supervision)
            preds["depth_gt"] = batch.depth_gt  # [B, N, fH, fW] metres, 0 = none
        return preds, state

    def decode(
        self,
        preds: dict[str, torch.Tensor],
        max_boxes: int = 300,
        post_center_range: tuple[float, ...] | None = None,
        score_threshold: float = 0.0,
    ) -> list[dict[str, torch.Tensor]] | None:
        """Detections per batch element (``boxes [N, 9]``, ``scores [N]``, ``labels [N]``): the head's
        top-k decoding (docs/CONTRACTS.md)."""
        return self.head.decode(preds, max_boxes, post_center_range, score_threshold)
