"""Memory-aware claims with real Celery workers on PostgreSQL and Redis: a worker whose
budget (STYLEQUEUE_WORKER_MEMORY_MB) is under a job's estimate never claims it while
one that fits takes it; a job that fits no live worker says so in its JSON and the
admin API and stays queued; a run that runs out of memory (faked in the worker
process by STYLEQUEUE_FAULT_OOM_RUNS) is tried once more, and fails with
``out_of_memory`` when it runs out again."""

from __future__ import annotations

import io
import json
import re
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fault_helpers import WorkerProcess, log_lines
from flask import Flask
from limits_helpers import DATA, limited_app, limited_env, new_client
from service_helpers import wait_for
from sqlalchemy import select

from api.services import EXTENSION_KEY
from shared.memory_estimate import MIB, estimate_peak_bytes
from shared.models import EventKind, JobEvent
from shared.params import parse_params

pytestmark = pytest.mark.slow

JOB_SECONDS = 120.0
SMALL = {"size": 32, "iterations": 2, "scales": 1}
BIG = {"size": 64, "iterations": 2, "scales": 1}
CONTENT_HW = (48, 64)  # tests/data/tubingen.png


def _estimate(params: dict[str, Any]) -> int:
    return estimate_peak_bytes(parse_params(params), CONTENT_HW, 1)


# Between the two jobs' estimates: the small worker fits the small job, not the big one.
SMALL_BUDGET_MB = (_estimate(SMALL) + _estimate(BIG)) / 2 / MIB
BIG_BUDGET_MB = 1_000_000.0


@dataclass
class Stack:
    app: Flask
    env: dict[str, str]
    base: Path
    small: WorkerProcess
    big: WorkerProcess
    auth: dict[str, str]
    admin: dict[str, str]


@pytest.fixture(scope="module")
def stack(
    postgresql_url: str, redis_url: str, redis_prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """A small worker and a big one (whose runs each run out of memory once), one API."""
    base = tmp_path_factory.mktemp("memory-claims")
    env = limited_env(postgresql_url, redis_url, f"{redis_prefix}memory:", base / "data")
    env["STYLEQUEUE_LOG_FORMAT"] = "json"
    started: list[WorkerProcess] = []
    try:
        small = _worker(env, base, "small", SMALL_BUDGET_MB)
        started.append(small)
        big = _worker(env, base, "big", BIG_BUDGET_MB, oom_runs=1)
        started.append(big)
        with limited_app(env) as app:
            _, auth = new_client(app)
            _, admin = new_client(app, is_admin=True)
            yield Stack(app, env, base, small, big, auth, admin)
    finally:
        for worker in started:
            worker.stop()


def _worker(
    env: dict[str, str], base: Path, kind: str, budget_mb: float, oom_runs: int = 0
) -> WorkerProcess:
    name = f"mem-{kind}-{secrets.token_hex(2)}"
    own = {**env, "STYLEQUEUE_WORKER_MEMORY_MB": f"{budget_mb:.3f}"}
    if oom_runs:
        own["STYLEQUEUE_FAULT_OOM_RUNS"] = str(oom_runs)
    return WorkerProcess(own, base / f"{name}.log", name)


def _post(stack: Stack, params: dict[str, Any]) -> dict[str, Any]:
    answer = stack.app.test_client().post(
        "/v1/jobs",
        data={
            "content": (io.BytesIO((DATA / "tubingen.png").read_bytes()), "content.png"),
            "style": [(io.BytesIO((DATA / "starry_night.png").read_bytes()), "style.png")],
            "params": json.dumps(params),
            "cache": "false",
        },
        headers=stack.auth,
        content_type="multipart/form-data",
    )
    assert answer.status_code == 202, answer.json
    body: dict[str, Any] = answer.json
    return body


def _job(stack: Stack, job_id: str) -> dict[str, Any]:
    found: dict[str, Any] = (
        stack.app.test_client().get(f"/v1/jobs/{job_id}", headers=stack.auth).json
    )
    return found


def _wait_status(stack: Stack, job_id: str, status: str) -> dict[str, Any]:
    job: dict[str, Any] = wait_for(
        f"job {job_id} to be {status}",
        lambda: (j := _job(stack, job_id))["status"] == status and j,
        timeout=JOB_SECONDS,
        interval=0.2,
    )
    return job


def _claims(stack: Stack, job_id: str) -> list[str | None]:
    with stack.app.extensions[EXTENSION_KEY].db.session() as session:
        return list(
            session.scalars(
                select(JobEvent.worker).where(
                    JobEvent.job_id == uuid.UUID(job_id), JobEvent.kind == EventKind.CLAIMED.value
                )
            )
        )


def _events_of(worker: WorkerProcess, job_id: str, event: str) -> list[dict[str, Any]]:
    return [
        line
        for line in log_lines(worker.log())
        if line.get("event") == event and line.get("job_id") == job_id
    ]


def _admin_page(stack: Stack, path: str) -> str:
    """``path`` of /admin, read by a browser logged in with the admin client's key."""
    http = stack.app.test_client()
    key = stack.admin["Authorization"].removeprefix("Bearer ")
    login = http.get("/admin/login").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', login)
    assert token is not None
    answer = http.post(
        "/admin/login", data={"key": key, "csrf_token": token.group(1), "next": "/admin"}
    )
    assert answer.status_code == 303, answer.text
    page = http.get(path)
    assert page.status_code == 200, page.text[:500]
    return page.text


def test_the_estimate_is_stored_and_shown(stack: Stack) -> None:
    job = _post(stack, SMALL)
    assert job["memory"]["estimate_bytes"] == _estimate(SMALL)
    assert job["memory"]["fits_no_worker"] is False
    _wait_status(stack, job["id"], "succeeded")
    page = _admin_page(stack, f"/admin/jobs/{job['id']}")
    assert 'data-role="memory"' in page and 'data-role="fits-no-worker"' not in page


def test_big_jobs_go_only_to_the_worker_they_fit_and_an_oom_is_retried_once(stack: Stack) -> None:
    jobs = [_post(stack, BIG)["id"] for _ in range(3)]
    for job_id in jobs:
        done = _wait_status(stack, job_id, "succeeded")
        assert done["worker"] == stack.big.node_name
        assert _claims(stack, job_id) == [stack.big.node_name]  # one attempt, on the big one
        # Its run ran out of memory (faked) once and was tried again, alone, in the attempt.
        retries = wait_for(
            f"job {job_id}'s retry in the big worker's log",
            lambda job_id=job_id: _events_of(stack.big, job_id, "out_of_memory_retry"),
            timeout=10,
        )
        assert len(retries) == 1
    # The small worker took some of the messages (or none): it never claimed a big job.
    assert all(
        line.get("event") != EventKind.CLAIMED.value or line.get("job_id") not in jobs
        for line in log_lines(stack.small.log())
    )


def test_a_second_out_of_memory_fails_the_job_naming_its_estimate(stack: Stack) -> None:
    stack.big.stop()
    twice = _worker(stack.env, stack.base, "twice", BIG_BUDGET_MB, oom_runs=2)
    try:
        job_id = _post(stack, BIG)["id"]
        failed = _wait_status(stack, job_id, "failed")
    finally:
        twice.stop()
    assert failed["worker"] == twice.node_name
    assert failed["error"]["code"] == "out_of_memory"
    message = failed["error"]["message"]
    assert "twice" in message and f"estimated at {_estimate(BIG) / MIB:.0f} MiB" in message
    assert f"a budget of {BIG_BUDGET_MB:.0f} MiB" in message
    assert len(_events_of(twice, job_id, "out_of_memory_retry")) == 1
    assert _claims(stack, job_id) == [twice.node_name]  # failed in its one attempt


def test_a_job_that_fits_no_live_worker_says_so_and_stays_queued(stack: Stack) -> None:
    # Only the small worker is left (the others stopped in the test before; their rows
    # stop counting once their last beat is old).
    job_id = _post(stack, BIG)["id"]
    job = wait_for(
        f"job {job_id} to say it fits no worker",
        lambda: (j := _job(stack, job_id))["memory"]["fits_no_worker"] and j,
        timeout=60,
        interval=0.5,
    )
    assert job["status"] == "queued"
    assert job["memory"]["estimate_bytes"] == _estimate(BIG)
    largest = job["memory"]["largest_worker_budget_bytes"]
    assert largest == int(SMALL_BUDGET_MB * MIB) or abs(largest - SMALL_BUDGET_MB * MIB) < MIB
    http = stack.app.test_client()
    detail = http.get(f"/v1/admin/jobs/{job_id}", headers=stack.admin).json
    assert detail["memory"]["fits_no_worker"] is True
    listed = http.get("/v1/admin/jobs", query_string={"status": "queued"}, headers=stack.admin)
    assert any(j["id"] == job_id and j["memory"]["fits_no_worker"] for j in listed.json["jobs"])
    page = _admin_page(stack, f"/admin/jobs/{job_id}")
    assert 'data-role="fits-no-worker"' in page and "fits no live worker" in page
    # A small job still runs on the small worker meanwhile; the big one is never claimed.
    small = _post(stack, SMALL)["id"]
    assert _wait_status(stack, small, "succeeded")["worker"] == stack.small.node_name
    assert _claims(stack, job_id) == []
    canceled = http.post(f"/v1/jobs/{job_id}/cancel", headers=stack.auth).json
    assert canceled["status"] == "canceled"
    assert canceled["memory"]["fits_no_worker"] is False  # said of a queued job only
