"""Conversions between Pillow images, tensors and PNG bytes, and resizing. No files."""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """A Pillow image -> float32 in 0..1: ``[4,H,W]`` for an RGBA image, else RGB ``[3,H,W]``.

    Only mode RGBA keeps its alpha (what ``decode_image(..., keep_alpha=True)``
    returns for a transparent image); any other mode is converted to RGB.
    """
    mode = "RGBA" if img.mode == "RGBA" else "RGB"
    array = np.array(img.convert(mode), dtype=np.uint8)  # a writable copy
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0).contiguous()


def tensor_to_pil(t: torch.Tensor) -> Image.Image:
    """RGB ``[3,H,W]`` or RGBA ``[4,H,W]`` (or with a batch of 1) in 0..1 -> 8-bit Pillow (clamped)."""
    t = t.detach().float().cpu()
    if t.dim() == 4:
        t = t[0]
    if t.dim() != 3 or t.shape[0] not in (3, 4):
        raise ValueError(f"expected an RGB tensor [3,H,W] or RGBA [4,H,W], got {tuple(t.shape)}")
    array = t.clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(array), mode="RGB" if t.shape[0] == 3 else "RGBA")


def encode_png(t: torch.Tensor) -> bytes:
    """RGB ``[3,H,W]`` or RGBA ``[4,H,W]`` in 0..1 -> PNG bytes (RGBA keeps its alpha)."""
    buffer = io.BytesIO()
    tensor_to_pil(t).save(buffer, format="PNG")
    return buffer.getvalue()


def resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize ``[1,3,H,W]``: antialiased bilinear down (like Pillow's), bicubic up.

    The same size returns the image unchanged, so pre-resized inputs stay exact.
    """
    if image.shape[-2:] == (height, width):
        return image
    if height <= image.shape[-2] and width <= image.shape[-1]:
        return F.interpolate(
            image, size=(height, width), mode="bilinear", align_corners=False, antialias=True
        )
    return F.interpolate(image, size=(height, width), mode="bicubic", align_corners=False)
