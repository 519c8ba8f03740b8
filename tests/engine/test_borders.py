"""The border of a result is no rougher than its inside: the network sees no frame round the image."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from shared.params import parse_params
from worker.engine import Network, transfer
from worker.engine.network import LAYER_NAMES


def test_a_flat_image_looks_flat_to_every_layer_up_to_its_border(network: Network) -> None:
    # With zero padding the border positions see a frame the inside does not: a
    # flat image's activations differ there, and the optimizer paints a line.
    flat = torch.full((1, 3, 48, 64), 0.4)
    feats = network.features(flat, LAYER_NAMES)
    for name, f in feats.items():
        centre = f[:, :, f.shape[2] // 2, f.shape[3] // 2][:, :, None, None]
        spread = float((f - centre).abs().max())
        assert spread <= 1e-3 * max(1.0, float(centre.abs().max())), f"{name}: {spread}"


def _neighbour_steps(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean |difference| between each pair of neighbouring rows, and of columns (0..255)."""
    x = image.float() * 255
    rows = (x[:, 1:, :] - x[:, :-1, :]).abs().mean(dim=(0, 2))
    cols = (x[:, :, 1:] - x[:, :, :-1]).abs().mean(dim=(0, 1))
    return rows, cols


@pytest.mark.parametrize("pair", [("tubingen", "starry_night"), ("chelsea", "shipwreck")])
def test_the_last_row_and_column_are_no_rougher_than_the_inside(
    network: Network, load: Callable[[str], torch.Tensor], pair: tuple[str, str]
) -> None:
    content, style = load(pair[0]), load(pair[1])
    out = transfer(network, content, [style], parse_params({"size": 64, "iterations": 60}))
    rows, cols = _neighbour_steps(out)
    inside = float(torch.cat([rows[2:-2], cols[2:-2]]).mean())
    for edge, step in (("last row", rows[-1]), ("last column", cols[-1])):
        assert float(step) <= 1.5 * inside, f"{edge}: {float(step):.1f} against {inside:.1f} inside"
