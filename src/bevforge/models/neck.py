"""Feature pyramid network (mmdet ``FPN`` semantics, start_level 0).

Shape letters: B* images, C channels, H/W feature-map size of a level.

Lateral 1x1 convs bring each input level to ``out_channels``; a top-down pass adds the nearest-upsampled
coarser level; 3x3 convs make the outputs. With ``add_extra_convs`` the levels beyond the inputs come
from stride-2 3x3 convs on the last output (mmdet ``'on_output'``), with a ReLU before every extra conv
but the first (``relu_before_extra_convs=True`` as official base); otherwise from stride-2 max-pooling.
Parameter names ``lateral_convs.i`` / ``fpn_convs.i`` match mmdet without its ``.conv`` wrapper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FPN(nn.Module):
    def __init__(
        self,
        in_channels: list[int] | tuple[int, ...],
        out_channels: int = 256,
        num_outs: int = 1,
        add_extra_convs: bool = True,
    ) -> None:
        super().__init__()
        in_channels = list(in_channels)
        if num_outs < len(in_channels):
            raise ValueError(
                f"num_outs ({num_outs}) must be >= the number of input levels ({len(in_channels)})"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_outs = num_outs
        self.add_extra_convs = add_extra_convs
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels
        )
        if add_extra_convs:
            for _ in range(num_outs - len(in_channels)):
                self.fpn_convs.append(nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """``len(in_channels)`` maps ``[B*, C_i, H_i, W_i]`` -> ``num_outs`` maps ``[B*, C, ...]``."""
        if len(feats) != len(self.in_channels):
            raise ValueError(f"FPN expects {len(self.in_channels)} input levels, got {len(feats)}")
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)]  # each [B*, C, H_i, W_i]
        for i in range(len(laterals) - 1, 0, -1):
            up = F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
            laterals[i - 1] = laterals[i - 1] + up
        outs = [self.fpn_convs[i](laterals[i]) for i in range(len(laterals))]
        n_in = len(laterals)
        for i in range(n_in, self.num_outs):
            if self.add_extra_convs:
                src = outs[-1] if i == n_in else F.relu(outs[-1])
                outs.append(self.fpn_convs[i](src))  # [B*, C, ceil(H/2), ceil(W/2)]
            else:
                outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return outs
