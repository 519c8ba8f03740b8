"""Job JSON → Job, and back; strict about promised fields, tolerant of new ones."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from client import InvalidResponseError, Job, JobPage, JobStatus
from client.text import describe_job, format_place, format_progress

JobJsonFactory = Callable[..., dict[str, Any]]


def test_a_running_job_parses_every_field(job_json: JobJsonFactory) -> None:
    job = Job.from_json(job_json())
    assert job.status is JobStatus.RUNNING
    assert job.params["size"] == 64
    assert (job.progress.iteration, job.progress.iterations) == (50, 200)
    assert job.progress.percent == 25.0 and job.progress.eta_seconds == 12.4
    assert job.attempts == 1 and job.worker == "celery@box" and job.error is None
    assert job.created_at == datetime(2026, 11, 27, 22, 0, tzinfo=UTC)
    assert job.started_at is not None and job.started_at.microsecond == 250000
    assert job.finished_at is None and job.run_seconds is None and job.queue_seconds == 1.25
    assert job.urls.result.endswith("/result")


def test_to_json_gives_back_the_api_shape(job_json: JobJsonFactory) -> None:
    data = job_json()
    assert Job.from_json(data).to_json() == data


def test_a_failed_job_carries_its_error(job_json: JobJsonFactory) -> None:
    job = Job.from_json(
        job_json(status="failed", error={"code": "engine_error", "message": "out of memory"})
    )
    assert job.status.is_final
    assert job.error is not None and job.error.code == "engine_error"
    assert job.error.message == "out of memory"


def test_a_queued_job_may_have_no_progress_yet(job_json: JobJsonFactory) -> None:
    job = Job.from_json(job_json(status="queued", progress=None, started_at=None, worker=None))
    assert job.progress.iteration == 0 and job.progress.eta_seconds is None
    assert not job.status.is_final


def test_z_suffixed_times_parse(job_json: JobJsonFactory) -> None:
    job = Job.from_json(job_json(created_at="2026-11-27T22:00:00Z"))
    assert job.created_at.utcoffset() is not None


def test_unknown_fields_are_ignored(job_json: JobJsonFactory) -> None:
    assert Job.from_json(job_json(priority=3, new_thing={"a": 1})).id


@pytest.mark.parametrize("field", ["id", "status", "params", "created_at", "urls"])
def test_a_missing_field_is_named(job_json: JobJsonFactory, field: str) -> None:
    data = job_json()
    del data[field]
    with pytest.raises(InvalidResponseError, match=f"job.{field}: missing"):
        Job.from_json(data)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"status": "paused"}, "job.status"),
        ({"attempts": True}, "job.attempts"),
        ({"attempts": "1"}, "job.attempts"),
        ({"created_at": "yesterday"}, "job.created_at"),
        ({"progress": {"iteration": "5"}}, "job.progress.iteration"),
        ({"urls": {"self": "/x"}}, "job.urls.result"),
        ({"error": {"code": "x"}}, "job.error.message"),
        ({"warnings": {"code": "x"}}, "job.warnings"),
        ({"warnings": [{"code": "x", "message": 3}]}, r"job.warnings\[0\].message"),
    ],
)
def test_a_malformed_field_is_named(
    job_json: JobJsonFactory, overrides: dict[str, object], named: str
) -> None:
    with pytest.raises(InvalidResponseError, match=named):
        Job.from_json(job_json(**overrides))


def test_warnings_parse_and_go_back_as_they_came(job_json: JobJsonFactory) -> None:
    warnings = [
        {"code": "content_short_side", "message": "the content is 1000x150: ..."},
        {"code": "style_alpha", "message": "style[0] has transparent areas: ..."},
    ]
    job = Job.from_json(job_json(warnings=warnings))
    assert [(w.code, w.message) for w in job.warnings] == [
        (w["code"], w["message"]) for w in warnings
    ]
    assert job.to_json()["warnings"] == warnings


def test_a_server_without_warnings_gives_none(job_json: JobJsonFactory) -> None:
    data = job_json()
    del data["warnings"]
    assert Job.from_json(data).warnings == ()


def test_not_an_object_is_an_invalid_response() -> None:
    with pytest.raises(InvalidResponseError, match="expected an object"):
        Job.from_json(["not", "a", "job"])


def test_params_cannot_be_changed(job_json: JobJsonFactory) -> None:
    job = Job.from_json(job_json())
    with pytest.raises(TypeError):
        job.params["size"] = 1024  # type: ignore[index]


def test_a_page_parses_its_jobs_and_cursor(job_json: JobJsonFactory) -> None:
    page = JobPage.from_json({"jobs": [job_json(id="a"), job_json(id="b")], "next_cursor": "c2"})
    assert [job.id for job in page.jobs] == ["a", "b"] and page.next_cursor == "c2"
    last = JobPage.from_json({"jobs": [], "next_cursor": None})
    assert last.jobs == () and last.next_cursor is None


@pytest.mark.parametrize(
    ("status", "final"),
    [
        ("queued", False),
        ("running", False),
        ("succeeded", True),
        ("failed", True),
        ("canceled", True),
    ],
)
def test_final_statuses(status: str, final: bool) -> None:
    assert JobStatus(status).is_final is final


def test_a_job_that_fits_no_worker_says_so_and_an_old_server_s_job_has_no_estimate(
    job_json: JobJsonFactory,
) -> None:
    memory = {
        "estimate_bytes": 3 * 2**30,
        "fits_no_worker": True,
        "largest_worker_budget_bytes": 2**30,
    }
    job = Job.from_json(job_json(status="queued", memory=memory))
    assert job.memory.fits_no_worker and job.memory.estimate_bytes == 3 * 2**30
    assert job.memory.largest_worker_budget_bytes == 2**30
    assert job.to_json()["memory"] == memory
    assert "no live worker has that much (the largest: 1024 MiB)" in describe_job(job)
    old = job_json()
    del old["memory"]
    parsed = Job.from_json(old)
    assert parsed.memory.estimate_bytes is None and not parsed.memory.fits_no_worker
    assert "memory" not in describe_job(parsed)
    with pytest.raises(InvalidResponseError, match=r"job.memory.estimate_bytes"):
        Job.from_json(job_json(memory={"estimate_bytes": "big"}))


def test_a_queued_jobs_place_parses_goes_back_and_reads_for_people(
    job_json: JobJsonFactory,
) -> None:
    place = {
        "position": 3,
        "expected_start_seconds": 42.5,
        "expected_start_at": "2026-11-27T22:01:00Z",
        "live_workers": 2,
    }
    data = job_json(status="queued", queue=place, priority=5)
    job = Job.from_json(data)
    assert job.queue is not None and job.queue.position == 3 and job.priority == 5
    assert job.queue.expected_start_at == datetime(2026, 11, 27, 22, 1, tzinfo=UTC)
    back = job.to_json()
    assert back["queue"]["position"] == 3 and back["queue"]["live_workers"] == 2
    text = describe_job(job)
    assert "queue     position 3 (1: the next to start)" in text
    assert "expected  to start in ~0:43" in text and "2 live workers" in text
    assert format_progress(job).endswith("queued (#3, starts in ~0:43)")
    alone = Job.from_json(job_json(status="queued", queue={**place, "position": None}))
    assert "behind the first 1000" in describe_job(alone) and format_place(alone) == ""
    idle = Job.from_json(
        job_json(
            status="queued", queue={**place, "expected_start_seconds": None, "live_workers": 0}
        )
    )
    assert "no worker is live" in describe_job(idle)
    assert format_place(idle) == "#3, no worker is live"
    assert Job.from_json({k: v for k, v in data.items() if k != "queue"}).queue is None
