"""``--param NAME=VALUE`` options, shared by ``stylize`` and ``submit``."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import click


def parse_param(item: str) -> tuple[str, Any]:
    """``k=v`` → ``(k, v)``; ``v`` is parsed as JSON when it parses, else kept as a string.

    So ``size=256`` is 256, ``style_blend=[1,2]`` a list, ``optimizer=adam`` the
    string "adam". The server validates names and ranges.
    """
    name, sep, text = item.partition("=")
    name = name.strip()
    if not sep or not name:
        raise click.BadParameter(f"expected NAME=VALUE, got {item!r}", param_hint="--param")
    try:
        # NaN and Infinity parse in Python's json but are not JSON: keep them as text.
        value: Any = json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        value = text
    return name, value


def parse_params(items: Iterable[str]) -> dict[str, Any]:
    """Every ``--param`` into one dict; a name given twice keeps the last value."""
    return dict(parse_param(item) for item in items)


def _reject_constant(name: str) -> Any:
    raise ValueError(name)
