"""GridMask augmentation (official BEVFormer ``GridMask``), applied in training only.

Shape letters: B* images (batch x frames x cameras flattened), C channels, H/W pixels.

A grid of stripes of period ``d`` (random in [2, H)) and width ``l = ratio * d`` is drawn on a canvas 1.5x
the image, optionally rotated by a random angle in [0, rotate) degrees, centre-cropped. ``mode=0`` zeroes
the stripes; ``mode=1`` (official default, ``1 - mask``) zeroes the square cells between them.
The official code draws one mask for all images of a batch with numpy's global RNG; here each image
gets its own mask (``per_image=True``), drawn from torch's RNG, reproducible under ``torch.manual_seed``;
the stripes are drawn on the host and the masks of all images made in one broadcast on the device.
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms.functional as TF
from torch import nn


class GridMask(nn.Module):
    def __init__(
        self,
        prob: float = 0.7,
        ratio: float = 0.5,
        rotate: int = 1,
        use_h: bool = True,
        use_w: bool = True,
        mode: int = 1,
        offset: bool = False,
        per_image: bool = True,
    ) -> None:
        super().__init__()
        self.prob, self.ratio, self.rotate = prob, ratio, rotate
        self.use_h, self.use_w, self.mode, self.offset = use_h, use_w, mode, offset
        self.per_image = per_image

    def _randint(self, low: int, high: int) -> int:
        return int(torch.randint(low, high, (1,)).item())

    @staticmethod
    def _stripes(n: int, d: int, start: int, width: int) -> np.ndarray:
        """``[n]`` bool: inside one of the official stripes ``[d*i + start, d*i + start + width)``,
        ``i < n // d`` (vectorised, on the host)."""
        k = np.arange(n) - start
        return (k >= 0) & (k % d < width) & (k // d < n // d)

    def _draw_lines(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """One mask's stripes on the 1.5x canvas, on the host: rows ``[hh]``, columns ``[ww]`` bool (True
        on a stripe). The period d in [2, max(H, 3)) and the two starts in [0, d) come from one draw of
        torch's RNG (no device work, reproducible under ``torch.manual_seed``)."""
        hh, ww = int(1.5 * h), int(1.5 * w)
        u_d, u_h, u_w = torch.rand(3).tolist()
        d = 2 + int(u_d * (max(h, 3) - 2))
        stripe = min(max(int(d * self.ratio + 0.5), 1), d - 1)
        st_h, st_w = int(u_h * d), int(u_w * d)
        rows = self._stripes(hh, d, st_h, stripe) if self.use_h else np.zeros(hh, dtype=bool)
        cols = self._stripes(ww, d, st_w, stripe) if self.use_w else np.zeros(ww, dtype=bool)
        return rows, cols

    def _mask(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """One ``[H, W]`` float mask (1 = keep), rotated by its own random angle (``rotate > 1``)."""
        hh, ww = int(1.5 * h), int(1.5 * w)
        rows, cols = self._draw_lines(h, w)
        on_stripe = torch.from_numpy(rows[:, None] | cols[None, :])  # [hh, ww]
        mask = (~on_stripe).float().to(device)  # [hh, ww] 0 on stripes
        angle = self._randint(0, self.rotate) if self.rotate > 1 else 0
        if angle:
            mask = TF.rotate(mask[None], float(angle))[0]  # nearest, zero fill as PIL
        top, left = (hh - h) // 2, (ww - w) // 2
        mask = mask[top : top + h, left : left + w]
        return 1 - mask if self.mode == 1 else mask

    def _masks_unrotated(self, count: int, h: int, w: int, device: torch.device) -> torch.Tensor:
        """``count`` masks ``[count, H, W]`` bool (True = keep) without rotation: the stripes of each are
        drawn and cropped on the host (the same draws as :meth:`_mask`), copied over once and combined
        in one broadcast, instead of ~20 small kernels per image."""
        hh, ww = int(1.5 * h), int(1.5 * w)
        top, left = (hh - h) // 2, (ww - w) // 2
        lines = np.empty((count, h + w), dtype=bool)  # [count, H + W] cropped rows, then columns
        for i in range(count):
            rows, cols = self._draw_lines(h, w)
            lines[i, :h], lines[i, h:] = rows[top : top + h], cols[left : left + w]
        lines_dev = torch.from_numpy(lines).to(device, non_blocking=True)  # [count, H + W]
        rows, cols = lines_dev[:, :h], lines_dev[:, h:]  # [count, H], [count, W]
        on_stripe = rows[:, :, None] | cols[:, None, :]  # [count, H, W]
        return on_stripe if self.mode == 1 else ~on_stripe  # mode 1 keeps the stripes (1 - mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B*, C, H, W]`` -> same shape; identity in eval mode or with probability ``1 - prob``."""
        assert x.dim() == 4, x.shape
        if not self.training or float(torch.rand(())) > self.prob:
            return x
        n, _, h, w = x.shape
        count = n if self.per_image else 1
        if self.rotate > 1:
            masks = torch.stack([self._mask(h, w, x.device) for _ in range(count)])  # [n or 1, H, W]
        else:
            masks = self._masks_unrotated(count, h, w, x.device)  # [n or 1, H, W]
        masks = masks[:, None].to(x.dtype)  # [n or 1, 1, H, W]
        if self.offset:
            noise = (2 * (torch.rand(count, 1, h, w) - 0.5)).to(x)
            return x * masks + noise * (1 - masks)
        return x * masks
