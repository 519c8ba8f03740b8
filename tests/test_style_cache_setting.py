"""STYLEQUEUE_STYLE_CACHE_MB: the worker's budget for style Gram targets, by device when unset."""

from __future__ import annotations

import pytest

from shared.errors import ConfigError
from shared.settings import DEFAULT_STYLE_CACHE_MB_CPU, DEFAULT_STYLE_CACHE_MB_GPU, Settings

MIB = 1024 * 1024


def test_unset_the_budget_depends_on_the_device() -> None:
    settings = Settings.from_env({})
    assert settings.style_cache_mb is None
    assert settings.style_cache_bytes("cuda") == DEFAULT_STYLE_CACHE_MB_GPU * MIB
    assert settings.style_cache_bytes("cpu") == DEFAULT_STYLE_CACHE_MB_CPU * MIB
    assert DEFAULT_STYLE_CACHE_MB_GPU > DEFAULT_STYLE_CACHE_MB_CPU > 0


@pytest.mark.parametrize(("raw", "mb"), [("0", 0), ("3", 3), (" 1024 ", 1024)])
def test_a_value_applies_on_every_device_and_zero_is_off(raw: str, mb: int) -> None:
    settings = Settings.from_env({"STYLEQUEUE_STYLE_CACHE_MB": raw})
    assert settings.style_cache_bytes("cuda") == settings.style_cache_bytes("cpu") == mb * MIB


@pytest.mark.parametrize("raw", ["-1", "lots", "1.5"])
def test_a_malformed_value_names_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({"STYLEQUEUE_STYLE_CACHE_MB": raw})
    assert "STYLEQUEUE_STYLE_CACHE_MB" in str(raised.value)
    assert raised.value.details == {"variable": "STYLEQUEUE_STYLE_CACHE_MB"}
