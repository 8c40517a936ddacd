"""GridMask augmentation (official BEVFormer ``GridMask``), applied in training only.

Shape letters: B* images (batch x frames x cameras flattened), C channels, H/W pixels.

A grid of stripes of period ``d`` (random in [2, H)) and width ``l = ratio * d`` is drawn on a canvas 1.5x
the image, optionally rotated by a random angle in [0, rotate) degrees, centre-cropped. ``mode=0`` zeroes
the stripes; ``mode=1`` (official default, ``1 - mask``) zeroes the square cells between them.
The official code draws one mask for all images of a batch with numpy's global RNG; here each image
gets its own mask (``per_image=True``), drawn from torch's RNG, reproducible under ``torch.manual_seed``.
"""

from __future__ import annotations

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
    def _stripes(n: int, d: int, start: int, width: int, device: torch.device) -> torch.Tensor:
        """``[n]`` bool: inside one of the official stripes ``[d*i + start, d*i + start + width)``,
        ``i < n // d`` (vectorised: no per-stripe kernel launches)."""
        k = torch.arange(n, device=device) - start
        return (k >= 0) & (k % d < width) & (torch.div(k, d, rounding_mode="floor") < n // d)

    def _mask(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """One ``[H, W]`` float mask (1 = keep)."""
        hh, ww = int(1.5 * h), int(1.5 * w)
        d = self._randint(2, max(h, 3))
        stripe = min(max(int(d * self.ratio + 0.5), 1), d - 1)
        st_h, st_w = self._randint(0, d), self._randint(0, d)
        rows = self._stripes(hh, d, st_h, stripe, device) if self.use_h else torch.zeros(hh, 1, device=device)
        cols = self._stripes(ww, d, st_w, stripe, device) if self.use_w else torch.zeros(ww, device=device)
        mask = (~(rows.bool().view(hh, 1) | cols.bool().view(1, ww))).float()  # [hh, ww] 0 on stripes
        angle = self._randint(0, self.rotate) if self.rotate > 1 else 0
        if angle:
            mask = TF.rotate(mask[None], float(angle))[0]  # nearest, zero fill as PIL
        top, left = (hh - h) // 2, (ww - w) // 2
        mask = mask[top : top + h, left : left + w]
        return 1 - mask if self.mode == 1 else mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B*, C, H, W]`` -> same shape; identity in eval mode or with probability ``1 - prob``."""
        assert x.dim() == 4, x.shape
        if not self.training or float(torch.rand(())) > self.prob:
            return x
        n, _, h, w = x.shape
        count = n if self.per_image else 1
        masks = torch.stack([self._mask(h, w, x.device) for _ in range(count)])  # [n or 1, H, W]
        masks = masks[:, None].to(x.dtype)  # [n or 1, 1, H, W]
        if self.offset:
            noise = (2 * (torch.rand(count, 1, h, w) - 0.5)).to(x)
            return x * masks + noise * (1 - masks)
        return x * masks
