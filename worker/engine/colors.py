"""Luminance-only transfer (Gatys et al. 2017, "Preserving color in neural artistic style transfer").

The content and style become grey (luminance in all three channels), the style's
luminance is matched to the content's mean and spread, the transfer runs on
those, and at the end the result's luminance is joined with the content's
chroma (YIQ). The colours of the output are the content's.
"""

from __future__ import annotations

import torch

# NTSC YIQ: Y is luminance, I and Q carry the colour.
_RGB_TO_YIQ = torch.tensor(
    [
        [0.299, 0.587, 0.114],
        [0.595716, -0.274453, -0.321263],
        [0.211456, -0.522591, 0.311135],
    ]
)
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def rgb_to_yiq(image: torch.Tensor) -> torch.Tensor:
    """``[N,3,H,W]`` RGB -> YIQ."""
    return torch.einsum("ij,njhw->nihw", _RGB_TO_YIQ.to(image), image)


def yiq_to_rgb(image: torch.Tensor) -> torch.Tensor:
    """``[N,3,H,W]`` YIQ -> RGB."""
    return torch.einsum("ij,njhw->nihw", _YIQ_TO_RGB.to(image), image)


def luminance(image: torch.Tensor) -> torch.Tensor:
    """``[N,3,H,W]`` RGB -> grey RGB: the luminance repeated in all three channels."""
    return rgb_to_yiq(image)[:, :1].expand(-1, 3, -1, -1).contiguous()


def match_luminance(style: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Grey ``style`` with its luminance mean and standard deviation moved to ``content``'s.

    Without it a dark style painting would darken the content (the paper's section 2.2).
    """
    y_style = rgb_to_yiq(style)[:, :1]
    y_content = rgb_to_yiq(content)[:, :1]
    scale = y_content.std() / y_style.std().clamp_min(1e-6)
    y = (y_style - y_style.mean()) * scale + y_content.mean()
    return y.clamp(0.0, 1.0).expand(-1, 3, -1, -1).contiguous()


def with_content_chroma(result: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """The luminance of ``result`` joined with the chroma (I, Q) of ``content`` (same size)."""
    y = rgb_to_yiq(result)[:, :1]
    iq = rgb_to_yiq(content)[:, 1:]
    return yiq_to_rgb(torch.cat([y, iq], dim=1))
