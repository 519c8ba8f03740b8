"""A job served from the result cache, as the client parses it and `stylequeue status` shows it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from client import Job
from client.text import describe_job

JobJsonFactory = Callable[..., dict[str, Any]]


def test_a_cached_job_parses_goes_back_and_says_so(job_json: JobJsonFactory) -> None:
    data = job_json(status="succeeded", attempts=0, worker=None, cached=True)
    job = Job.from_json(data)
    assert job.cached is True and job.to_json() == data
    assert "cached    yes" in describe_job(job)
    plain = Job.from_json(job_json())
    assert plain.cached is False and "cached" not in describe_job(plain)


def test_a_server_from_before_the_cache_gives_false(job_json: JobJsonFactory) -> None:
    data = job_json()
    del data["cached"]
    assert Job.from_json(data).cached is False
