"""Fast JPEG decoding straight to the target size (no PIL round trip).

``simplejpeg`` (libjpeg-turbo) decodes with DCT scaling (1/2, 1/4, 1/8) when the target size allows, so
a 0.5x resize of a 1600x900 image is decoded directly at 800x450; the remaining resize (if any) is a
bilinear ``torch`` interpolation. Falls back to ``torchvision.io.decode_jpeg`` when simplejpeg fails
on an unusual file (e.g. CMYK), and raises :class:`ImageDecodeError` naming the file otherwise.

Shapes: images are returned as ``[H, W, 3]`` uint8 numpy arrays, RGB.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bevforge.errors import InputError


class ImageDecodeError(InputError, OSError):
    """An image file is missing or cannot be decoded; the message names the file and the fix."""


class MissingImageError(ImageDecodeError, FileNotFoundError):
    """The image file does not exist (always fatal, unlike a corrupt file during training)."""


def target_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """(W, H) after resizing by ``scale``, truncated like the official ``RandomScaleImageMultiViewImage``."""
    return max(1, int(width * scale + 1e-9)), max(1, int(height * scale + 1e-9))


def read_image(path: str | Path, out_wh: tuple[int, int] | None = None) -> np.ndarray:
    """Decode ``path`` to ``[H, W, 3]`` uint8 RGB, resized to ``out_wh = (W, H)`` when given."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MissingImageError(
            f"{path}: image file not found; check data.data_root and that the samples/ folder is complete "
            "(or re-run `bevforge prepare` for this dataset)"
        ) from None
    return decode_jpeg_bytes(data, out_wh, name=str(path))


def decode_jpeg_bytes(
    data: bytes, out_wh: tuple[int, int] | None = None, name: str = "<bytes>"
) -> np.ndarray:
    """Decode JPEG bytes to ``[H, W, 3]`` uint8 RGB (resized to ``out_wh`` when given)."""
    img: np.ndarray | None = None
    try:
        import simplejpeg

        if out_wh is not None:
            img = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=out_wh[0], min_height=out_wh[1])
        else:
            img = simplejpeg.decode_jpeg(data, colorspace="RGB")
    except (ValueError, ImportError):
        img = None
    if img is None:
        try:
            with warnings.catch_warnings():  # torchvision 0.29 deprecates its image codecs
                warnings.simplefilter("ignore", DeprecationWarning)
                from torchvision.io import ImageReadMode, decode_jpeg

                t = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
            img = t.permute(1, 2, 0).numpy()  # [3, H, W] -> [H, W, 3]
        except (RuntimeError, ValueError):
            raise ImageDecodeError(
                f"{name}: not a decodable JPEG (truncated or corrupt); restore the file from the dataset "
                "archive (or regenerate the synthetic dataset)"
            ) from None
    if out_wh is not None and (img.shape[1], img.shape[0]) != tuple(out_wh):
        img = resize_uint8(img, out_wh)
    return img


def resize_uint8(img: np.ndarray, out_wh: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``[H, W, 3]`` uint8 to ``(W, H)`` (antialiased when shrinking)."""
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()  # [1, 3, H, W]
    shrink = out_wh[0] < img.shape[1] or out_wh[1] < img.shape[0]
    t = F.interpolate(t, size=(out_wh[1], out_wh[0]), mode="bilinear", align_corners=False, antialias=shrink)
    return t[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()  # [H, W, 3]
