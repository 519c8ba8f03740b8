"""``stylequeue params``, run as a program: what it lists is what the schema accepts.

Each listed default, bound and choice is tried against the validator that the
API and the engine use, so a listing that drifted from the schema fails here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shared.errors import ParameterError
from shared.params import StyleParams, parse_params

STYLEQUEUE = str(Path(sys.executable).with_name("stylequeue"))


def _params(*args: str, columns: int = 80) -> str:
    done = subprocess.run(
        [STYLEQUEUE, "params", *args],
        env={**os.environ, "COLUMNS": str(columns)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return done.stdout


NAMES = list(StyleParams.model_fields)


@pytest.fixture(scope="module")
def listed() -> list[dict[str, Any]]:
    """What ``stylequeue params --json`` prints."""
    parsed: list[dict[str, Any]] = json.loads(_params("--json"))
    return parsed


def _rejected(name: str, value: Any) -> bool:
    try:
        parse_params({name: value})
    except ParameterError as exc:
        assert exc.field == name
        return True
    return False


def test_it_lists_every_parameter_with_the_default_the_validator_fills_in(
    listed: list[dict[str, Any]],
) -> None:
    defaults = parse_params({}).model_dump()
    assert {p["name"]: p["default"] for p in listed} == defaults
    assert [p["name"] for p in listed] == list(defaults)  # the schema's order
    assert all(p["description"] for p in listed)


@pytest.mark.parametrize("name", NAMES)
def test_each_listed_range_is_what_the_validator_accepts(
    name: str, listed: list[dict[str, Any]]
) -> None:
    (param,) = [p for p in listed if p["name"] == name]
    kind = param["kind"]
    if kind in ("integer", "number"):
        low, high = param["minimum"], param["maximum"]
        step = 1 if kind == "integer" else 1e-6 * max(1.0, abs(high))
        assert not _rejected(name, low) and not _rejected(name, high)
        assert _rejected(name, low - step) and _rejected(name, high + step)
    elif kind == "string":
        assert param["choices"] and all(not _rejected(name, c) for c in param["choices"])
        assert _rejected(name, "not-a-choice")
    elif kind == "boolean":
        assert not _rejected(name, True) and not _rejected(name, False)
        assert _rejected(name, "perhaps")
    elif kind == "numbers":
        most = param["max_items"]
        assert not _rejected(name, [1.0] * most) and _rejected(name, [1.0] * (most + 1))
        assert param["min_items"] == 1 and _rejected(name, [])
        assert param["nullable"] and not _rejected(name, None)
    else:
        pytest.fail(f"{name}: unexpected kind {kind!r}")


def test_the_table_has_a_row_for_each_with_default_and_range() -> None:
    lines = _params(columns=200).splitlines()
    assert lines[0].split() == ["NAME", "DEFAULT", "RANGE", "WHAT"]
    rows = {line.split()[0]: line for line in lines[1:] if not line.startswith(" ")}
    assert list(rows) == NAMES
    assert rows["size"].split()[:5] == ["size", "512", "16", "to", "2048"]
    assert rows["optimizer"].split()[:4] == ["optimizer", "lbfgs", "lbfgs,", "adam"]
    assert rows["preserve_colors"].split()[:4] == ["preserve_colors", "false", "true,", "false"]
    assert rows["content_weight"].split()[:5] == ["content_weight", "1", "0", "to", "1e9"]
    assert rows["seed"].split()[:5] == ["seed", "0", "0", "to", "4294967295"]


def test_the_table_wraps_what_each_does_to_fit_the_terminal() -> None:
    lines = _params(columns=80).splitlines()
    assert max(len(line) for line in lines) <= 80
    assert len(lines) > len(NAMES) + 1  # some descriptions took two lines
