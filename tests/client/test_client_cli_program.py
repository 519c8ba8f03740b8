"""The ``stylequeue`` program itself, run as a user runs it: a subprocess, talking over HTTP
to a real ``stylequeue api`` (gunicorn) on the test database."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data"
CONTENT = str(DATA / "tubingen.png")
STYLE = str(DATA / "starry_night.png")
StylequeueCli = Callable[..., subprocess.CompletedProcess[str]]
TINY = ["--param", "size=32", "--param", "iterations=2", "--param", "scales=1"]


def _error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_an_unknown_param_names_the_closest_one_and_all_of_them(
    stylequeue_cli: StylequeueCli,
) -> None:
    done = stylequeue_cli("submit", CONTENT, STYLE, *TINY, "--param", "sise=300")
    assert done.returncode == 1 and done.stdout == ""
    line = _error_line(done.stderr)
    assert "sise: unknown parameter; did you mean size?" in line
    assert "known: size, iterations, optimizer, content_weight" in line and "seed" in line
