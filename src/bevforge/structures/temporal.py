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
        out = continues_scene(self.scene_tokens, scene_tokens, frame_valid)  # [B] host
        # non_blocking from host memory: staged at once, no wait for the GPU stream
        return out.to(self.prev_bev.device, non_blocking=True)

    def detach(self) -> TemporalState:
        return TemporalState(self.prev_bev.detach(), self.prev_can_bus.detach(), list(self.scene_tokens))


def continues_scene(
    prev_tokens: list[str], scene_tokens: list[str], frame_valid: torch.Tensor | None = None
) -> torch.Tensor:
    """``[B]`` bool on the host: the frame has a previous BEV, i.e. the previous frame's scene (``""``:
    none) is its scene and the frame is real (``frame_valid`` ``[B]``, a host field of a Batch; None: all
    real)."""
    same = [bool(p) and p == s for p, s in zip(prev_tokens, scene_tokens, strict=True)]
    out = torch.tensor(same, dtype=torch.bool)
    if frame_valid is not None:
        out &= frame_valid.cpu()
    return out


def carried_tokens(scene_tokens: list[str], frame_valid: torch.Tensor) -> list[str]:
    """The scene tokens a state carries after a frame: its scene, ``""`` for a padding frame."""
    return [s if ok else "" for s, ok in zip(scene_tokens, frame_valid.tolist(), strict=True)]
