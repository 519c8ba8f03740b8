"""Horizontal scaling, shown on one machine: three worker processes, one Redis, one database.

Twelve tiny jobs go in through the real API; all of them must succeed, each
claimed once by exactly one worker (the ``job_events`` history), with every
worker doing some of them. The workers log JSON lines
(STYLEQUEUE_LOG_FORMAT=json), and their logs must tell the same story.
"""

from __future__ import annotations

import io
import json
import socket
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from scaling_pool import StartPool, WorkerPool
from sqlalchemy import select

from api import create_app
from api.services import EXTENSION_KEY
from shared.auth import create_client
from shared.models import JobEvent

N_WORKERS = 3
N_JOBS = 12
TINY_PARAMS = {"size": 32, "iterations": 3, "scales": 1}
FINISH_TIMEOUT_SECONDS = 60.0
FINISHED = {"succeeded", "failed", "canceled"}


@dataclass(frozen=True)
class ScalingRun:
    pool: WorkerPool
    jobs: dict[str, dict[str, Any]]  # job id -> its final JSON from the API
    claims: dict[str, list[tuple[str, int]]]  # job id -> [(worker, attempt)] from job_events
    log_lines: dict[str, list[dict[str, Any]]]  # node -> its parsed JSON log lines
    seconds: float


@pytest.fixture(scope="module")
def run(worker_pool: StartPool, image_bytes: Callable[[str], bytes]) -> Iterator[ScalingRun]:
    pool = worker_pool(N_WORKERS)
    app = create_app(pool.settings)
    db = app.extensions[EXTENSION_KEY].db
    with db.session() as session:
        _, key = create_client(session, "scaling")
    http = app.test_client()
    auth = {"Authorization": f"Bearer {key}"}
    started = time.monotonic()
    job_ids = []
    for _ in range(N_JOBS):
        response = http.post(
            "/v1/jobs",
            data={
                "content": (io.BytesIO(image_bytes("tubingen")), "content.png"),
                "style": (io.BytesIO(image_bytes("starry_night")), "style.png"),
                "params": json.dumps(TINY_PARAMS),
                "cache": "false",  # every job computed: the workers' share is measured
            },
            headers=auth,
            content_type="multipart/form-data",
        )
        assert response.status_code == 202, response.get_json()
        job_ids.append(response.get_json()["id"])

    jobs: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + FINISH_TIMEOUT_SECONDS
    while len(jobs) < N_JOBS and time.monotonic() < deadline:
        for job_id in job_ids:
            body = http.get(f"/v1/jobs/{job_id}", headers=auth).get_json()
            if body["status"] in FINISHED:
                jobs[job_id] = body
        time.sleep(0.25)
    seconds = time.monotonic() - started

    claims: dict[str, list[tuple[str, int]]] = defaultdict(list)
    with db.session() as session:
        # Only this run's jobs: the database is shared with the rest of the test session.
        ours = [uuid.UUID(job_id) for job_id in job_ids]
        query = select(JobEvent).where(JobEvent.kind == "claimed", JobEvent.job_id.in_(ours))
        for event in session.scalars(query):
            claims[str(event.job_id)].append((event.worker or "", event.attempt))
    log_lines = {w.node: _json_lines(w.log_path.read_text()) for w in pool.workers}
    yield ScalingRun(pool, jobs, dict(claims), log_lines, seconds)
    db.dispose()


def _json_lines(text: str) -> list[dict[str, Any]]:
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"log line {number} is not JSON: {line!r}")
    return lines


def test_every_job_completes(run: ScalingRun) -> None:
    assert len(run.jobs) == N_JOBS, f"only {len(run.jobs)} finished in {FINISH_TIMEOUT_SECONDS} s"
    statuses = Counter(job["status"] for job in run.jobs.values())
    assert statuses == {"succeeded": N_JOBS}
    print(f"{N_JOBS} jobs on {N_WORKERS} workers in {run.seconds:.1f} s")


def test_each_job_was_claimed_once_by_one_worker(run: ScalingRun) -> None:
    assert set(run.claims) == set(run.jobs)
    for job_id, job_claims in run.claims.items():
        assert job_claims == [(run.jobs[job_id]["worker"], 1)], job_id


def test_the_work_is_spread_over_every_worker(run: ScalingRun) -> None:
    per_worker = Counter(worker for claims in run.claims.values() for worker, _ in claims)
    # Prefetch 1, one job at a time: each worker holds one message while the queue
    # has twelve, so none of the three can be left out.
    assert len(per_worker) == N_WORKERS, per_worker
    # Each is its Celery node name, as the worker was started with (%h: this host).
    nodes = {w.node.replace("%h", socket.gethostname()) for w in run.pool.workers}
    assert set(per_worker) == nodes
    assert sum(per_worker.values()) == N_JOBS
    print("jobs per worker:", sorted(per_worker.values()))


def test_the_worker_logs_are_json_lines_with_each_event_and_job_id(run: ScalingRun) -> None:
    logged_claims: dict[str, str] = {}
    succeeded: set[str] = set()
    for node, lines in run.log_lines.items():
        assert lines, f"{node} logged nothing"
        for line in lines:
            assert {"time", "level", "logger", "pid", "message"} <= set(line)
            if line.get("event") == "claimed":
                assert line["job_id"] not in logged_claims, "claimed twice"
                assert line["worker"] == node.replace("%h", socket.gethostname()), "its own name"
                logged_claims[line["job_id"]] = line["worker"]
                assert line["job_id"] in line["message"] and line["attempt"] == 1
            elif line.get("event") == "succeeded":
                succeeded.add(line["job_id"])
    # The logs and the database tell the same story.
    assert logged_claims == {job_id: claims[0][0] for job_id, claims in run.claims.items()}
    assert succeeded == set(run.jobs)
