"""The ``stylequeue`` program itself, run as a user runs it: a subprocess, talking over HTTP
to a real ``stylequeue api`` (gunicorn) on the test database."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from client_job_driver import JobDriver

from cli.client_cmds import DEFAULT_URL, EXIT_NOTHING_TO_CANCEL

DATA = Path(__file__).resolve().parents[1] / "data"
CONTENT = str(DATA / "tubingen.png")
STYLE = str(DATA / "starry_night.png")
STYLEQUEUE = str(Path(sys.executable).with_name("stylequeue"))
StylequeueCli = Callable[..., subprocess.CompletedProcess[str]]
TINY = ["--param", "size=32", "--param", "iterations=2", "--param", "scales=1"]


# How a Python exception's class shows in text: what a message for people must not have.
EXCEPTION_NAME = re.compile(r"\b[A-Z]\w*(Error|Exception)\b")


def _error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert not EXCEPTION_NAME.search(lines[0]), lines[0]
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


def _help(*command: str) -> str:
    env = {**os.environ, "COLUMNS": "80"}
    done = subprocess.run(
        [STYLEQUEUE, *command, "--help"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    too_wide = [line for line in done.stdout.splitlines() if len(line) > 80]
    assert not too_wide, too_wide
    return done.stdout


@pytest.mark.parametrize("command", ["submit", "status", "list", "cancel", "result"])
def test_the_help_of_each_client_command_names_its_variables(command: str) -> None:
    text = _help(command)
    assert "STYLEQUEUE_URL" in text and DEFAULT_URL in text
    assert "STYLEQUEUE_API_KEY" in text and "stylequeue keys create NAME" in text


def test_the_help_of_submit_gives_its_exit_status() -> None:
    lines = [line.strip() for line in _help("submit").splitlines()]
    assert "Exit status:" in lines
    assert any(line.startswith("0 ") and "succeeded" in line for line in lines)
    assert any(line.startswith("3 ") and "failed or was canceled" in line for line in lines)
    assert any(line.startswith("130 ") and "Ctrl-C" in line for line in lines)


def test_the_help_of_cancel_says_when_a_running_job_stops() -> None:
    text = " ".join(_help("cancel").split())
    assert "A running job is asked to stop" in text and "within about a second" in text
    assert "3 the job had already succeeded or failed" in text


def test_an_image_the_server_refuses_is_named_by_its_local_file(
    stylequeue_cli: StylequeueCli, tmp_path: Path
) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    done = stylequeue_cli("submit", str(text), STYLE, *TINY)
    assert done.returncode == 1 and done.stdout == ""
    line = _error_line(done.stderr)
    assert line.startswith(f"Error: content image {text}: ") and "(invalid_image, HTTP 400)" in line
    done = stylequeue_cli("submit", CONTENT, STYLE, str(text), *TINY)  # the second style
    line = _error_line(done.stderr)
    assert line.startswith(f"Error: style image {text}: ") and "(invalid_image, HTTP 400)" in line


def test_a_result_that_cannot_be_saved_names_the_file_asked_for(
    stylequeue_cli: StylequeueCli, tmp_path: Path
) -> None:
    out = tmp_path / "no-such-folder" / "out.png"
    done = stylequeue_cli("result", str(uuid.uuid4()), "-o", str(out))
    assert done.returncode == 1 and done.stdout == ""
    assert _error_line(done.stderr) == f"Error: {out}: No such file or directory"
