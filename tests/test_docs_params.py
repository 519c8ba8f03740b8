"""README.md's table of job parameters agrees with the parameter schema.

Every parameter the schema has is in the table and no other; each default is
the schema's; each range the table states is the schema's (the table may leave
out a bound, as it does the weights' sanity cap, but never state a wrong one);
each list of choices is the schema's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.params import ParamSpec, param_specs

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Job parameters"
SUPERSCRIPTS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789")
# What the table writes for a default of null.
NULL_DEFAULT = {"style_blend": "equal"}


@dataclass(frozen=True)
class Row:
    name: str
    default: str
    range: str


def readme_rows() -> list[Row]:
    """One Row per parameter named in the table; a row naming several splits its defaults."""
    text = README.read_text(encoding="utf-8")
    assert SECTION in text, f"README.md has no {SECTION!r} section"
    lines = text.split(SECTION, 1)[1].splitlines()
    table = [line for line in lines[: _end_of_table(lines)] if line.startswith("|")]
    rows = []
    for line in table[2:]:  # the header and the |---| line
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        names = re.findall(r"`(\w+)`", cells[0])
        defaults = [d.strip() for d in cells[1].split(",")] if len(names) > 1 else [cells[1]]
        assert len(defaults) == len(names), f"README row {line!r}: a default per name"
        rows += [Row(n, d.strip("`"), cells[2]) for n, d in zip(names, defaults, strict=True)]
    return rows


def _end_of_table(lines: list[str]) -> int:
    started = False
    for i, line in enumerate(lines):
        if line.startswith("|"):
            started = True
        elif started:
            return i
    return len(lines)


def number(text: str) -> float:
    """``16``, ``0.1``, ``10⁹``, ``2³²−1`` as numbers."""
    text = text.replace("−", "-").strip()
    power = re.fullmatch(r"(\d+)([⁰¹²³⁴⁵⁶⁷⁸⁹]+)(?:-(\d+))?", text)
    if power:
        base, exponent, minus = power.groups()
        return float(int(base) ** int(exponent.translate(SUPERSCRIPTS)) - int(minus or 0))
    return float(text)


SPECS = {spec.name: spec for spec in param_specs()}
ROWS = readme_rows()


def test_the_table_names_every_parameter_once_and_no_other() -> None:
    names = [row.name for row in ROWS]
    assert sorted(names) == sorted(SPECS), "README.md's parameter table vs the schema"
    assert len(names) == len(set(names))


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_each_default_is_the_schemas(row: Row) -> None:
    spec = SPECS[row.name]
    if spec.default is None:
        assert row.default == NULL_DEFAULT.get(row.name, "null")
    elif isinstance(spec.default, bool):
        assert row.default == str(spec.default).lower()
    elif isinstance(spec.default, int | float):
        assert number(row.default) == spec.default
    else:
        assert row.default == spec.default


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_each_range_is_the_schemas(row: Row) -> None:
    spec: ParamSpec = SPECS[row.name]
    if spec.choices is not None:
        assert re.findall(r"`(\w+)`", row.range) == list(spec.choices)
    elif spec.kind in ("integer", "number"):
        both = re.fullmatch(r"(\S+)\s*–\s*(\S+)", row.range)
        lower = re.fullmatch(r"≥\s*(\S+)", row.range)
        assert both or lower, f"{row.name}: a range 'A–B' or '≥ A', not {row.range!r}"
        if both:
            assert (number(both[1]), number(both[2])) == (spec.minimum, spec.maximum)
        else:
            assert lower is not None and number(lower[1]) == spec.minimum
    elif spec.kind == "boolean":
        assert row.range in ("", "`true`, `false`")
