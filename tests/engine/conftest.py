"""Fixtures of the engine tests: the network loaded once per session, tiny sample images."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image

from worker.engine import Network, get_network, pil_to_tensor

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="session")
def network() -> Network:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return get_network("caffe", "cpu")


@pytest.fixture(scope="session")
def load() -> Callable[[str], torch.Tensor]:
    """A sample image from tests/data (64 px) as RGB [3,H,W] in 0..1."""

    def _load(name: str) -> torch.Tensor:
        return pil_to_tensor(Image.open(DATA / f"{name}.png"))

    return _load


@pytest.fixture(scope="session")
def content(load: Callable[[str], torch.Tensor]) -> torch.Tensor:
    return load("tubingen")


@pytest.fixture(scope="session")
def style(load: Callable[[str], torch.Tensor]) -> torch.Tensor:
    return load("starry_night")
