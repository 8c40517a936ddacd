"""BEVDepth-style depth loss on the LSS depth distributions (BEVDet's ``LSSViewTransformerBEVDepth``).

Shape letters: B batch, N cameras, D depth bins, fH/fW image-feature size.

``loss_depth = weight * sum_{cells with a target} BCE(depth [D], one_hot(bin)) / max(#cells, 1)``: binary
cross-entropy of the softmax probabilities against the one-hot bin of the cell's nearest lidar depth
(``data/depth_targets.py``), summed over the bins, averaged over the cells that have a lidar point (official
``get_depth_loss``; official weight ``loss_depth_weight = 3.0``). The bin is the nearest bin depth (the
official code floors ``(d - (start - step)) / step``, i.e. up to one step further than the frustum point).
"""

from __future__ import annotations

import torch
from torch import Tensor

from bevforge.data.depth_targets import depth_bin_targets


def depth_bce_loss(depth_prob: Tensor, depth_gt_m: Tensor, bin_depths_m: Tensor, eps: float = 1e-6) -> Tensor:
    """``depth_prob [B, N, D, fH, fW]`` (softmax over D), ``depth_gt_m [B, N, fH, fW]`` metres (0 = no
    target), ``bin_depths_m [D]`` -> scalar mean BCE over the cells with a target (0 when there are none)."""
    if depth_prob.dim() != 5 or depth_gt_m.shape != depth_prob.shape[:2] + depth_prob.shape[3:]:
        raise ValueError(
            f"depth {tuple(depth_prob.shape)} and depth_gt {tuple(depth_gt_m.shape)} disagree: the depth "
            "targets must be on the model's feature grid (data.pad_divisor / model.bevdet.feat_downsample)"
        )
    if bin_depths_m.numel() != depth_prob.shape[2]:
        raise ValueError(f"{bin_depths_m.numel()} bin depths for {depth_prob.shape[2]} depth channels")
    idx, valid = depth_bin_targets(depth_gt_m.to(depth_prob.device), bin_depths_m.to(depth_prob.device))
    prob = depth_prob.float().movedim(2, -1)[valid]  # [V, D] cells with a target
    target = torch.nn.functional.one_hot(idx[valid], depth_prob.shape[2]).float()  # [V, D]
    p = prob.clamp(eps, 1 - eps)
    bce = -(target * p.log() + (1 - target) * torch.log1p(-p))  # [V, D]
    return bce.sum() / max(int(valid.sum()), 1)
