"""``--param NAME=VALUE`` options, shared by ``stylize`` and ``submit``, and
``stylequeue params``, which lists the parameters from their one schema."""

from __future__ import annotations

import dataclasses
import json
import shutil
import textwrap
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from shared.params import ParamSpec


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


def format_value(value: Any) -> str:
    """A parameter value as one types it after ``--param NAME=``: ``512``, ``0.1``, ``adam``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e6:
        return str(int(value))
    if isinstance(value, float):  # 1e9, not 1e+09
        return f"{value:g}".replace("e+0", "e").replace("e+", "e").replace("e-0", "e-")
    return str(value)


def format_range(spec: ParamSpec) -> str:
    """What values a parameter takes: ``16 to 2048``, ``lbfgs, adam``, ``1 to 8 numbers``."""
    if spec.choices is not None:
        text = ", ".join(spec.choices)
    elif spec.kind == "boolean":
        text = "true, false"
    elif spec.kind == "numbers":
        text = f"{spec.min_items} to {spec.max_items} numbers"
    elif spec.minimum is not None and spec.maximum is not None:
        text = f"{format_value(spec.minimum)} to {format_value(spec.maximum)}"
    elif spec.minimum is not None:
        text = f">= {format_value(spec.minimum)}"
    elif spec.maximum is not None:
        text = f"<= {format_value(spec.maximum)}"
    else:
        text = spec.kind
    return f"{text}, or null" if spec.nullable else text


def params_table(specs: Iterable[ParamSpec], width: int) -> str:
    """NAME, DEFAULT, RANGE and WHAT, one parameter a row; WHAT wrapped to ``width``."""
    rows = [("NAME", "DEFAULT", "RANGE", "WHAT")]
    rows += [
        (spec.name, format_value(spec.default), format_range(spec), spec.description)
        for spec in specs
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    indent = sum(widths) + 2 * len(widths)
    lines = []
    for row in rows:
        head = "  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)) + "  "
        what = textwrap.wrap(row[3], max(width - indent, 20)) or [""]
        lines.append(head + what[0])
        lines += [" " * indent + more for more in what[1:]]
    return "\n".join(line.rstrip() for line in lines)


@click.command("params")
@click.option("--json", "as_json", is_flag=True, help="Print them as a JSON array.")
def params_cmd(as_json: bool) -> None:
    """List the job parameters, with defaults and ranges.

    Each parameter's default, the values it takes and what it does, read from
    the schema that the API and the engine validate with.
    Give them to `submit` and `stylize` as --param NAME=VALUE (VALUE is JSON
    when it parses, else a string), e.g. --param size=256 --param
    optimizer=adam --param style_blend=[2,1]. A name not listed, or a value
    out of its range, is refused with a message naming it.
    """
    from shared.params import param_specs

    specs = param_specs()
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(spec) for spec in specs], indent=2))
    else:
        click.echo(params_table(specs, shutil.get_terminal_size((100, 24)).columns))


def register(group: click.Group) -> None:
    """Add ``stylequeue params`` to the ``stylequeue`` group."""
    group.add_command(params_cmd)
