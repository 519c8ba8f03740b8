"""Blend weights mean what they say: the endpoints are the single styles, and between them
a result's style statistics move steadily from one style to the other."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from shared.params import parse_params
from worker.engine import Network, transfer
from worker.engine.images import resize
from worker.engine.losses import STYLE_LAYERS, Objective, gram_matrix


@pytest.fixture(scope="module")
def matisse(load: Callable[[str], torch.Tensor]) -> torch.Tensor:
    return load("woman-with-hat-matisse")


def test_endpoint_weights_are_exactly_the_single_styles(
    network: Network, content: torch.Tensor, style: torch.Tensor, matisse: torch.Tensor
) -> None:
    base = {"size": 40, "iterations": 6, "scales": 1}
    alone = [transfer(network, content, [s], parse_params(base)) for s in (style, matisse)]
    first = transfer(
        network, content, [style, matisse], parse_params({**base, "style_blend": [1, 0]})
    )
    second = transfer(
        network, content, [style, matisse], parse_params({**base, "style_blend": [0, 1]})
    )
    assert torch.equal(first, alone[0])
    assert torch.equal(second, alone[1])
    assert not torch.equal(alone[0], alone[1])


def _grams(network: Network, image: torch.Tensor) -> list[torch.Tensor]:
    feats = network.features(image.unsqueeze(0) if image.dim() == 3 else image, STYLE_LAYERS)
    return [gram_matrix(feats[layer]) for layer in STYLE_LAYERS]


def _distance(grams: list[torch.Tensor], targets: list[torch.Tensor]) -> float:
    """Mean over the layers of the relative Gram distance |G - A|^2 / |A|^2."""
    terms = [
        float((g - a).square().mean() / a.square().mean())
        for g, a in zip(grams, targets, strict=True)
    ]
    return sum(terms) / len(terms)


def test_the_blend_is_the_weighted_sum_of_each_styles_own_loss(
    network: Network, content: torch.Tensor, style: torch.Tensor, matisse: torch.Tensor
) -> None:
    image = content.unsqueeze(0)
    styles = [resize(s.unsqueeze(0), 48, 48) for s in (style, matisse)]
    weights = (0.3, 0.7)
    kwargs = {"content_weight": 0.0, "style_weight": 1.0, "tv_weight": 0.0}
    blend = Objective(network, image, styles, weights, **kwargs)
    singles = [Objective(network, image, [s], [1.0], **kwargs) for s in styles]
    x = torch.rand_like(image, generator=torch.Generator().manual_seed(1))

    def grad(loss: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        leaf = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(loss(leaf), leaf)
        return g

    def weighted_sum(v: torch.Tensor) -> torch.Tensor:
        return weights[0] * singles[0](v).style + weights[1] * singles[1](v).style

    expected = grad(weighted_sum)
    got = grad(lambda v: blend(v).style)
    assert torch.allclose(got, expected, rtol=1e-3, atol=1e-6 * float(expected.abs().max()))


def test_style_statistics_move_monotonically_with_the_weights(
    network: Network, content: torch.Tensor, style: torch.Tensor, matisse: torch.Tensor
) -> None:
    size = 48
    base = {"size": size, "iterations": 40, "scales": 1, "style_weight": 30}
    results = [
        transfer(
            network, content, [style, matisse], parse_params({**base, "style_blend": [1 - w, w]})
        )
        for w in (0.0, 0.3, 0.7, 1.0)
    ]
    # The targets as the engine sees them: each style at the output's longest side.
    targets = [_grams(network, resize(s.unsqueeze(0), *_fit(s, size))) for s in (style, matisse)]
    to_first = [_distance(_grams(network, r), targets[0]) for r in results]
    to_second = [_distance(_grams(network, r), targets[1]) for r in results]
    assert to_first == sorted(to_first), to_first
    assert to_second == sorted(to_second, reverse=True), to_second
    # 7 parts of the second style to 3 of the first: closer to the second.
    assert to_second[2] < to_first[2]
    assert to_first[1] < to_second[1]


def _fit(image: torch.Tensor, longest: int) -> tuple[int, int]:
    h, w = image.shape[1:]
    if h >= w:
        return longest, max(1, round(w * longest / h))
    return max(1, round(h * longest / w)), longest
