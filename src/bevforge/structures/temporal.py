"""Explicit temporal state carried from one frame to the next (no hidden module attributes).

One entry per batch element, so batch size > 1 with samples at different scene positions works.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TemporalState:
    prev_bev: torch.Tensor  # [B, bev_h * bev_w, C] BEV features of the previous frame
    prev_can_bus: torch.Tensor  # [B, 18] absolute can_bus of the previous frame (pos [0:3], yaw deg [17])
    scene_tokens: list[str]  # [B] scene of the previous frame; "" = no previous frame

    def prev_exists(self, scene_tokens: list[str], frame_valid: torch.Tensor | None = None) -> torch.Tensor:
        """[B] bool: the previous frame belongs to the same scene as the current one."""
        same = [bool(p) and p == s for p, s in zip(self.scene_tokens, scene_tokens, strict=True)]
        out = torch.tensor(same, dtype=torch.bool)  # [B] built on the host
        if frame_valid is not None:  # host-side in a Batch (structures/batch.py HOST_FIELDS)
            out &= frame_valid.cpu()
        # non_blocking from host memory: staged at once, no wait for the GPU stream
        return out.to(self.prev_bev.device, non_blocking=True)

    def detach(self) -> TemporalState:
        return TemporalState(self.prev_bev.detach(), self.prev_can_bus.detach(), list(self.scene_tokens))
