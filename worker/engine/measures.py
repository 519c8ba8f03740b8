"""Measures of a result's look, for the tests and the gallery: numbers, not pictures.

* ``structure_correlation``: how much of the content's structure survives, as the
  correlation of the two images' gradient magnitudes (luminance), optionally in
  a box (the small houses of a photo, say).
* ``patch_copy``: how closely the result's feature patches copy the style's,
  the best normalised cross-correlation of each k x k patch of deep activations
  with any patch of the style's. A painting's object pasted into the picture
  scores near 1; a texture in the painting's manner scores well below.
* ``band_power``: the share of the luminance's spectral power at periods in a
  band (a regular dot grain 3-4 px apart), and ``speckle``, the mean residual
  after a 3 x 3 blur, optionally in a box (a flat sky).

Images are RGB ``[3,H,W]`` (or ``[1,3,H,W]``) tensors in 0..1. Boxes are
fractions of the image: ``(top, left, bottom, right)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from worker.engine.images import resize
from worker.engine.network import Network

Box = tuple[float, float, float, float]


def _batch(image: torch.Tensor) -> torch.Tensor:
    return (image if image.dim() == 4 else image.unsqueeze(0)).float()


def luminance(image: torch.Tensor) -> torch.Tensor:
    """``[1,1,H,W]`` luminance (Rec. 601) of an RGB image."""
    x = _batch(image)
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def crop(image: torch.Tensor, box: Box | None) -> torch.Tensor:
    """The part of ``[...,H,W]`` inside ``box`` (fractions), the whole image for None."""
    if box is None:
        return image
    height, width = image.shape[-2:]
    top, left, bottom, right = box
    return image[
        ...,
        round(top * height) : round(bottom * height),
        round(left * width) : round(right * width),
    ]


def _gradient_magnitude(gray: torch.Tensor) -> torch.Tensor:
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    kernels = torch.stack([sobel, sobel.t()]).unsqueeze(1)
    g = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), kernels)
    return g.square().sum(dim=1, keepdim=True).sqrt()


def structure_correlation(
    output: torch.Tensor, content: torch.Tensor, box: Box | None = None
) -> float:
    """Pearson correlation of the gradient magnitudes of ``output`` and ``content``.

    The content is resized to the output first. 1: every edge of the content is
    there with its strength; 0: no relation left.
    """
    out = _batch(output)
    ref = resize(_batch(content), out.shape[2], out.shape[3])
    a = crop(_gradient_magnitude(luminance(out)), box).flatten()
    b = crop(_gradient_magnitude(luminance(ref)), box).flatten()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-12))


@dataclass(frozen=True)
class PatchCopy:
    """How closely a result's k x k feature patches copy the style's (cosine, -1..1)."""

    best: float  # the output patch closest to any style patch
    top: float  # the mean of the closest 2% of the output's patches
    mean: float  # the mean, over the output's patches, of each one's closest match


def patch_copy(
    network: Network,
    output: torch.Tensor,
    style: torch.Tensor,
    *,
    layer: str = "relu4_1",
    k: int = 3,
) -> PatchCopy:
    """Each k x k patch of ``output``'s ``layer`` activations against every patch of ``style``'s.

    The activations are centred on the style's mean per channel (so that shared
    darkness or flatness does not count as a match) and each patch is compared by
    its cosine with every style patch; the best match per output patch is kept.
    Pass the style at the size the run used it (``style_scale`` times the output's
    longest side).
    """
    with torch.no_grad():
        a = network.features(_batch(output).to(network.device), [layer])[layer].float()
        b = network.features(_batch(style).to(network.device), [layer])[layer].float()
        centre = b.mean(dim=(2, 3), keepdim=True)
        pa = F.unfold(a - centre, k)[0]  # [C*k*k, L]
        pb = F.unfold(b - centre, k)[0]
        pa = pa / pa.norm(dim=0, keepdim=True).clamp_min(1e-6)
        pb = pb / pb.norm(dim=0, keepdim=True).clamp_min(1e-6)
        best = (pa.t() @ pb).max(dim=1).values.cpu()
    n_top = max(1, round(0.02 * best.numel()))
    return PatchCopy(
        best=float(best.max()),
        top=float(best.topk(n_top).values.mean()),
        mean=float(best.mean()),
    )


def band_power(image: torch.Tensor, min_period: float, max_period: float) -> float:
    """The share of the luminance's spectral power (mean removed) at periods in the band, px."""
    gray = luminance(image)[0, 0]
    gray = gray - gray.mean()
    power = torch.fft.fft2(gray).abs().square()
    fy = torch.fft.fftfreq(gray.shape[0]).view(-1, 1)
    fx = torch.fft.fftfreq(gray.shape[1]).view(1, -1)
    radius = (fy.square() + fx.square()).sqrt()
    band = (radius >= 1.0 / max_period) & (radius <= 1.0 / min_period)
    return float(power[band].sum() / power.sum().clamp_min(1e-12))


def speckle(image: torch.Tensor, box: Box | None = None) -> float:
    """Mean |image - its 3 x 3 box blur| over the colour channels, 0..255 units."""
    x = _batch(image)
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return float(crop((x - blurred).abs(), box).mean()) * 255.0
