"""The style layers' shares: a layer with fewer positions than channels (a Gram target of
too low a rank, which the result can only match by copying the painting) counts less."""

from __future__ import annotations

import pytest
import torch

from worker.engine import Network
from worker.engine.losses import Objective, layer_weights


def test_a_layer_with_fewer_positions_than_channels_counts_less() -> None:
    # At 512 px (content 384x512, style 320x512) every layer has enough positions.
    assert layer_weights([(384, 512), (320, 512)]) == pytest.approx((0.2,) * 5)
    # A 128 px pass: relu5_1 has 8x5 = 40 positions for 512 channels, relu4_1 160.
    shares = layer_weights([(96, 128), (80, 128)])
    assert sum(shares) == pytest.approx(1.0)
    assert shares[0] == shares[1] == shares[2]
    assert shares[3] == pytest.approx(shares[0] * 160 / 512)
    assert shares[4] == pytest.approx(shares[0] * 40 / 512)


def test_the_objective_weighs_its_layers_by_the_fewest_positions(
    network: Network, content: torch.Tensor, style: torch.Tensor
) -> None:
    objective = Objective(
        network, content.unsqueeze(0), [style.unsqueeze(0)], [1.0],
        content_weight=1.0, style_weight=10.0, tv_weight=0.1,
    )  # fmt: skip
    expected = layer_weights([tuple(content.shape[1:]), tuple(style.shape[1:])])
    assert objective.layer_weights == pytest.approx(tuple(5 * s for s in expected))
