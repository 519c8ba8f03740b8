"""The ``stylequeue`` program itself, run as a user runs it: a subprocess, talking over HTTP
to a real ``stylequeue api`` (gunicorn) on the test database."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from client_job_driver import JobDriver

from cli.client_cmds import EXIT_NOTHING_TO_CANCEL

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


def _submitted(stylequeue_cli: StylequeueCli) -> str:
    done = stylequeue_cli("submit", CONTENT, STYLE, *TINY)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_cancel_of_a_queued_job_says_it_is_canceled(stylequeue_cli: StylequeueCli) -> None:
    job_id = _submitted(stylequeue_cli)
    done = stylequeue_cli("cancel", job_id)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"job {job_id} canceled\n", "")
    again = stylequeue_cli("cancel", job_id)  # idempotent
    assert (again.returncode, again.stdout) == (0, f"job {job_id} canceled\n")


def test_cancel_of_a_running_job_says_the_cancel_is_requested_and_when_it_stops(
    stylequeue_cli: StylequeueCli, driver: JobDriver
) -> None:
    job_id = _submitted(stylequeue_cli)
    driver.claim(job_id)
    done = stylequeue_cli("cancel", job_id)
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout == (
        f"cancel requested: job {job_id} is running; its worker sees the request within about "
        "a second and stops after the iteration it is on, then the job is canceled\n"
    )


def test_cancel_of_a_finished_job_says_nothing_was_canceled(
    stylequeue_cli: StylequeueCli, driver: JobDriver
) -> None:
    job_id = _submitted(stylequeue_cli)
    driver.fail(job_id, code="engine_error", message="NaN in the loss")
    done = stylequeue_cli("cancel", job_id)
    assert done.returncode == EXIT_NOTHING_TO_CANCEL == 3 and done.stdout == ""
    assert _error_line(done.stderr) == (
        f"Error: job {job_id} had already failed; there was nothing to cancel"
    )
    as_json = stylequeue_cli("cancel", job_id, "--json")
    assert as_json.returncode == 3 and json.loads(as_json.stdout)["status"] == "failed"
