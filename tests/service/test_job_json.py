"""The hand-built job JSON (shared.job_json) and the documented pydantic schema (JobOut) agree."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from api.schemas import JobOut
from shared.job_json import job_dict, job_json
from shared.job_view import JobView
from shared.models import JobStatus
from shared.params import parse_params
from shared.queue_position import QueuePlace, QueueSnapshot

NOW = datetime(2026, 11, 27, 22, 0, 0, 123456, tzinfo=UTC)


# A job as the poll reads it (the read model every job's JSON is made from).
QUEUED = JobView(
    id=uuid.uuid4(),
    client_id=1,
    status=JobStatus.QUEUED,
    params=parse_params({"size": 64}).model_dump(mode="json"),
    iteration=0,
    iterations=300,
    percent=0.0,
    eta_seconds=None,
    attempts=0,
    worker=None,
    error_code=None,
    error_message=None,
    created_at=NOW - timedelta(seconds=7.25),
    started_at=None,
    finished_at=None,
    n_styles=1,
    preview_file=None,
    cached=False,
    deadline_at=None,
    warnings=[],
    priority=0,
    follows=None,
    memory_estimate=None,
)
RUNNING = replace(
    QUEUED,
    status=JobStatus.RUNNING,
    iteration=120,
    percent=40.0,
    eta_seconds=3.5,
    attempts=1,
    worker="celery@gpu0",
    started_at=NOW - timedelta(seconds=2, microseconds=1),
)
SUCCEEDED = replace(
    RUNNING,
    status=JobStatus.SUCCEEDED,
    iteration=300,
    percent=100.0,
    eta_seconds=0.0,
    finished_at=NOW - timedelta(seconds=1),
)
FAILED = replace(
    RUNNING,
    status=JobStatus.FAILED,
    attempts=2,
    error_code="out_of_memory",
    error_message="CUDA out of memory",
    finished_at=NOW.replace(microsecond=0),
)
CANCELED_WHILE_QUEUED = replace(QUEUED, status=JobStatus.CANCELED, finished_at=NOW)
FAILED_WITHOUT_MESSAGE = replace(FAILED, error_message=None)
BLENDED = replace(
    QUEUED,
    params=parse_params(
        {
            "style_blend": [0.25, 0.75],
            "content_weight": 1e-3,
            "style_weight": 1e9,
            "tv_weight": 1e-7,
        }
    ).model_dump(mode="json"),
)
# An exact repeat of an earlier job, its result copied: finished at once, never claimed.
CACHED = replace(
    QUEUED,
    status=JobStatus.SUCCEEDED,
    iteration=300,
    percent=100.0,
    finished_at=QUEUED.created_at,
    cached=True,
)
# A job whose inputs were warned about at submit (a message with quotes and a non-ASCII sign).
WARNED = replace(
    QUEUED,
    warnings=[
        {"code": "content_short_side", "message": "the content is 1000x150: at size 512 ..."},
        {"code": "style_alpha", "message": 'style[0] has "transparent" areas \u00d7'},
    ],
)
# PostgreSQL's JSONB hands keys back in its own order, and an older row may lack a parameter.
REORDERED_AND_OLD = replace(
    QUEUED,
    params={k: v for k, v in sorted(QUEUED.params.items(), reverse=True) if k != "seed"},
)


@pytest.mark.parametrize(
    "record",
    [
        QUEUED,
        RUNNING,
        SUCCEEDED,
        FAILED,
        CANCELED_WHILE_QUEUED,
        FAILED_WITHOUT_MESSAGE,
        BLENDED,
        REORDERED_AND_OLD,
        WARNED,
        CACHED,
    ],
    ids=[
        "queued",
        "running",
        "succeeded",
        "failed",
        "canceled",
        "no-message",
        "blend",
        "old",
        "warned",
        "cached",
    ],
)
def test_job_json_equals_the_pydantic_schema_text(record: JobView) -> None:
    by_pydantic = JobOut.from_job(record, NOW).model_dump_json(by_alias=True)
    # Same keys in the same order, same values (numbers may differ only in how an
    # exponent is spelt: 1e-7 against 1e-07), same timestamp text.
    assert _pairs(job_json(record, NOW)) == _pairs(by_pydantic)
    assert JobOut.model_validate_json(job_json(record, NOW)) == JobOut.from_job(record, NOW)


@pytest.mark.parametrize("placed", [True, False], ids=["in-window", "past-window"])
def test_a_queued_jobs_place_is_the_same_in_both(placed: bool) -> None:
    places = {QUEUED.id: QueuePlace(3, 42.25)} if placed else {}
    snapshot = QueueSnapshot(NOW - timedelta(seconds=2), places, live_workers=2)
    by_pydantic = JobOut.from_job(QUEUED, NOW, queue=snapshot).model_dump_json(by_alias=True)
    assert _pairs(job_json(QUEUED, NOW, queue=snapshot)) == _pairs(by_pydantic)
    shown = job_dict(QUEUED, NOW, queue=snapshot)["queue"]
    if placed:
        assert shown["position"] == 3 and shown["expected_start_seconds"] == 40.2
        assert shown["expected_start_at"] == "2026-11-27T22:00:40.323456Z"
    else:
        assert shown == {
            "position": None,
            "expected_start_seconds": None,
            "expected_start_at": None,
            "live_workers": 2,
        }
    assert job_dict(RUNNING, NOW, queue=snapshot)["queue"] is None, "only while queued"


def _pairs(text: str) -> Any:
    return json.loads(text, object_pairs_hook=list)


def test_job_json_timings_are_measured_at_now() -> None:
    later = NOW + timedelta(seconds=10)
    running = job_dict(RUNNING, later)
    assert running["queue_seconds"] == pytest.approx(5.25 - 0.000001)
    assert running["run_seconds"] == pytest.approx(12.000001)
    queued = json.loads(job_json(QUEUED, later))
    assert queued["queue_seconds"] == pytest.approx(17.25)
    assert queued["run_seconds"] is None
    assert queued["created_at"] == "2026-11-27T21:59:52.873456Z"


def test_a_parameter_the_schema_dropped_is_not_shown() -> None:
    stale = replace(QUEUED, params={**QUEUED.params, "retired_knob": 3})
    assert "retired_knob" not in job_dict(stale, NOW)["params"]
