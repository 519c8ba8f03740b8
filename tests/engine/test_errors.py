"""Bad parameters and inputs are rejected with the name of what is wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from shared.errors import InvalidInputError, ParameterError
from shared.images import decode_image
from shared.params import parse_params
from worker.engine import EngineInterrupted, EngineState, Network, transfer


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"size": 0}, "size"),
        ({"iterations": 0}, "iterations"),
        ({"style_weight": -1}, "style_weight"),
        ({"content_weight": -0.5}, "content_weight"),
        ({"tv_weight": -1}, "tv_weight"),
        ({"optimizer": "sgd"}, "optimizer"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_parameters_are_named(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(ParameterError) as info:
        parse_params(raw)
    assert info.value.field == field
    assert field in str(info.value)


def test_blend_length_mismatch_is_named(
    network: Network, content: torch.Tensor, style: torch.Tensor
) -> None:
    params = parse_params({"size": 32, "iterations": 1, "style_blend": [1, 1]})
    with pytest.raises(ParameterError) as info:
        transfer(network, content, [style], params)
    assert info.value.field == "style_blend"


def test_negative_blend_weight_is_named(
    network: Network, content: torch.Tensor, style: torch.Tensor
) -> None:
    params = parse_params({"size": 32, "iterations": 1, "style_blend": [-1]})
    with pytest.raises(ParameterError) as info:
        transfer(network, content, [style], params)
    assert info.value.field == "style_blend"


def test_no_style_is_named(network: Network, content: torch.Tensor) -> None:
    with pytest.raises(ParameterError) as info:
        transfer(network, content, [], parse_params({"size": 32}))
    assert info.value.field == "style"


def test_unreadable_image_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "not-an-image.png"
    bad.write_bytes(b"this is text")
    with pytest.raises(InvalidInputError) as info:
        decode_image(bad.read_bytes(), field="content")
    assert info.value.field == "content"


@pytest.mark.parametrize(
    ("content_value", "message"),
    [
        (torch.rand(32, 32), "RGB tensor"),
        (torch.full((3, 32, 32), float("nan")), "finite"),
        (torch.full((3, 32, 32), 255.0), "0..1"),
    ],
)
def test_bad_content_tensors_are_named(
    network: Network, style: torch.Tensor, content_value: torch.Tensor, message: str
) -> None:
    with pytest.raises(InvalidInputError) as info:
        transfer(network, content_value, [style], parse_params({"size": 32, "iterations": 1}))
    assert info.value.field == "content"
    assert message in info.value.message


def test_a_strip_too_thin_for_vgg_names_size(network: Network, style: torch.Tensor) -> None:
    strip = torch.rand(3, 4, 200)
    with pytest.raises(ParameterError) as info:
        transfer(network, strip, [style], parse_params({"size": 64, "iterations": 1}))
    assert info.value.field == "size"


def test_resume_with_other_parameters_is_named(
    network: Network, content: torch.Tensor, style: torch.Tensor
) -> None:
    params = parse_params({"size": 32, "iterations": 4, "scales": 1})
    with pytest.raises(EngineInterrupted) as info:
        transfer(network, content, [style], params, should_stop=lambda: True)
    other = parse_params({"size": 32, "iterations": 4, "scales": 1, "style_weight": 5})
    with pytest.raises(ParameterError) as err:
        transfer(network, content, [style], other, resume=info.value.state)
    assert err.value.field == "resume"


def test_garbage_state_bytes_are_named() -> None:
    with pytest.raises(InvalidInputError) as info:
        EngineState.from_bytes(b"not a state")
    assert info.value.field == "resume"
