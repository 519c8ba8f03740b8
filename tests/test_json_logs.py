"""Logs: one line per event with the job's id in it; JSON lines with STYLEQUEUE_LOG_FORMAT=json.

The worker's side runs for real in tests/scaling (three Celery workers logging
JSON). Here: the API's lines through the real app, and ``configure_logging`` in
a fresh process, as gunicorn and the CLI call it.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient

from shared.errors import ConfigError
from shared.logging import JsonLinesFormatter, job_event
from shared.settings import Settings, log_options_from_env

JOB_ID = uuid.UUID("7062e67f-e075-415f-a230-69252ad5fd51")


def as_json(record: logging.LogRecord) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(JsonLinesFormatter().format(record))
    return parsed


def test_the_api_logs_a_created_and_a_cancel_requested_line_per_job(
    http: FlaskClient,
    auth: dict[str, str],
    image_bytes: Callable[[str], bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="api.jobs")
    response = http.post(
        "/v1/jobs",
        data={
            "content": (io.BytesIO(image_bytes("tubingen")), "content.png"),
            "style": (io.BytesIO(image_bytes("starry_night")), "style.png"),
            "params": json.dumps({"size": 32, "iterations": 2, "scales": 1}),
        },
        headers=auth,
        content_type="multipart/form-data",
    )
    assert response.status_code == 202
    job_id = response.get_json()["id"]
    assert http.post(f"/v1/jobs/{job_id}/cancel", headers=auth).status_code == 200

    lines = [as_json(r) for r in caplog.records if r.name == "api.jobs"]
    mine = [line for line in lines if line.get("job_id") == job_id]
    assert [line["event"] for line in mine] == ["created", "cancel_requested"]
    created, canceled = mine
    assert job_id in created["message"] and isinstance(created["client_id"], int)
    assert canceled["status"] == "canceled"  # it was queued: canceled at once


def test_a_json_line_has_the_fixed_keys_and_the_events_fields() -> None:
    record = logging.LogRecord(
        "worker.runner", logging.INFO, __file__, 1, "job %s claimed", (JOB_ID,), None
    )
    record.__dict__.update(job_event("claimed", JOB_ID, worker="vm/12", attempt=2))
    line = as_json(record)
    assert line["message"] == f"job {JOB_ID} claimed"
    assert line["event"] == "claimed" and line["job_id"] == str(JOB_ID)
    assert line["worker"] == "vm/12" and line["attempt"] == 2
    assert {"time", "level", "logger", "pid"} <= set(line) and line["level"] == "INFO"


def test_a_line_that_only_formats_a_job_uuid_still_gets_its_job_id() -> None:
    # e.g. shared.submissions' "job %s committed but not enqueued (%s)".
    record = logging.LogRecord(
        "shared.submissions", logging.WARNING, __file__, 1, "job %s: %s", (JOB_ID, "x"), None
    )
    assert as_json(record)["job_id"] == str(JOB_ID)


def test_an_exception_goes_into_the_same_line() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord("w", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    text = JsonLinesFormatter().format(record)
    assert "\n" not in text and "RuntimeError: boom" in json.loads(text)["exception"]


SCRIPT = f"""
import logging, uuid, warnings
from shared.logging import configure_logging
configure_logging()
logging.getLogger("demo").info("job %s claimed", uuid.UUID("{JOB_ID}"))
logging.getLogger("demo").debug("hidden at INFO")
warnings.warn("a warning is a line too")
"""


def run_script(**env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STYLEQUEUE_LOG_")}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stderr.splitlines()


def test_json_on_request_every_line_parses() -> None:
    lines = [json.loads(line) for line in run_script(STYLEQUEUE_LOG_FORMAT="json")]
    assert [line["level"] for line in lines] == ["INFO", "WARNING"]
    assert lines[0]["job_id"] == str(JOB_ID) and lines[0]["logger"] == "demo"
    assert "a warning is a line too" in lines[1]["message"]


def test_text_by_default_one_readable_line_with_the_job_id() -> None:
    first = run_script()[0]
    assert first.endswith(f"INFO {first.split()[3]} demo: job {JOB_ID} claimed")


def test_the_level_comes_from_the_environment() -> None:
    lines = run_script(STYLEQUEUE_LOG_LEVEL="debug")
    assert any(line.endswith("hidden at INFO") for line in lines)


@pytest.mark.parametrize(
    ("variable", "value"), [("STYLEQUEUE_LOG_FORMAT", "xml"), ("STYLEQUEUE_LOG_LEVEL", "loud")]
)
def test_a_malformed_log_setting_names_its_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        log_options_from_env({variable: value})
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env({variable: value})
