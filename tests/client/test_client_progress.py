"""The progress line that `submit --wait` draws."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from client import Job
from client.text import format_duration, format_progress, render_bar

JobJsonFactory = Callable[..., dict[str, Any]]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "--:--"),
        (-1.0, "--:--"),
        (float("inf"), "--:--"),
        (0.0, "0:00"),
        (0.2, "0:01"),
        (59.0, "0:59"),
        (61.0, "1:01"),
        (3600.0, "1:00:00"),
        (3725.5, "1:02:06"),
    ],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("fraction", "bar"),
    [(0.0, "[..........]"), (0.25, "[##........]"), (1.0, "[##########]"), (7.0, "[##########]")],
)
def test_render_bar(fraction: float, bar: str) -> None:
    assert render_bar(fraction, width=10) == bar


def test_a_running_job_shows_percent_iteration_and_eta(job_json: JobJsonFactory) -> None:
    line = format_progress(Job.from_json(job_json()), width=8)
    assert line == "[##......]  25.0%  it 50/200  ETA 0:13  running"


def test_a_queued_job_shows_no_eta(job_json: JobJsonFactory) -> None:
    job = Job.from_json(job_json(status="queued", progress=None))
    assert format_progress(job, width=4) == "[....]   0.0%  it 0/200  ETA --:--  queued"


def test_a_succeeded_job_shows_a_full_bar(job_json: JobJsonFactory) -> None:
    job = Job.from_json(job_json(status="succeeded"))
    assert format_progress(job, width=4) == "[####] 100.0%  it 200/200  ETA --:--  succeeded"
