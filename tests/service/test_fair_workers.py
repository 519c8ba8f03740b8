"""Fair share with real Celery workers: a backlog of one client does not hold up another
client's new job beyond the next free worker, weights 2:1 start jobs 2:1, and a client's
priority 10 job starts before its priority 0 ones; on PostgreSQL and SQLite, with Redis."""

from __future__ import annotations

import io
import json
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from fault_helpers import WorkerProcess
from flask import Flask
from limits_helpers import DATA, TINY, limited_app, limited_env, new_client
from service_helpers import wait_for
from sqlalchemy import select

from api.services import EXTENSION_KEY
from shared import jobs
from shared.models import EventKind, Job, JobEvent, JobStatus, utcnow

pytestmark = pytest.mark.slow

WORKERS = 2
JOB_SECONDS = 120.0
CONTENT = (DATA / "tubingen.png").read_bytes()
STYLE = (DATA / "starry_night.png").read_bytes()


@dataclass(frozen=True)
class Stack:
    app: Flask
    workers: list[WorkerProcess]


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def stack(
    request: pytest.FixtureRequest,
    redis_url: str,
    redis_prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """Two workers (one job each at a time) and an in-process API, in a key space of their
    own: the workers choose among this key space's jobs only."""
    database_url: str = request.getfixturevalue(f"{request.param}_url")
    base = tmp_path_factory.mktemp(f"fair-{request.param}")
    prefix = f"{redis_prefix}fair-{request.param}-{secrets.token_hex(2)}:"
    env = limited_env(database_url, redis_url, prefix, base / "data")
    workers: list[WorkerProcess] = []
    try:
        for index in range(WORKERS):
            name = f"fair{index}-{secrets.token_hex(2)}"
            workers.append(WorkerProcess(env, base / f"{name}.log", name))
        with limited_app(env) as app:
            yield Stack(app, workers)
    finally:
        for worker in workers:
            worker.stop()


def _post(app: Flask, auth: dict[str, str], priority: int | None = None) -> uuid.UUID:
    form: dict[str, object] = {
        "content": (io.BytesIO(CONTENT), "content.png"),
        "style": [(io.BytesIO(STYLE), "style.png")],
        "params": json.dumps(TINY),
        "cache": "false",  # every job computed: a repeat would be served from the result cache
    }
    if priority is not None:
        form["priority"] = str(priority)
    answer = app.test_client().post(
        "/v1/jobs", data=form, headers=auth, content_type="multipart/form-data"
    )
    assert answer.status_code == 202, answer.json
    return uuid.UUID(answer.json["id"])


def _claims(app: Flask, client_ids: set[int]) -> list[tuple[datetime, int, uuid.UUID]]:
    """Every first claim of these clients' jobs: (when, client, job), in order."""
    with app.extensions[EXTENSION_KEY].db.session() as session:
        rows = session.execute(
            select(JobEvent.at, Job.client_id, Job.id)
            .join(Job, Job.id == JobEvent.job_id)
            .where(
                Job.client_id.in_(client_ids),
                JobEvent.kind == EventKind.CLAIMED.value,
                JobEvent.attempt == 1,
            )
            .order_by(JobEvent.at, JobEvent.id)
        ).all()
    return [(at, client_id, job_id) for at, client_id, job_id in rows]


def _created_at(app: Flask, job_id: uuid.UUID) -> datetime:
    with app.extensions[EXTENSION_KEY].db.session() as session:
        found = session.scalar(select(Job.created_at).where(Job.id == job_id))
    assert found is not None
    return found


def _status(app: Flask, job_id: uuid.UUID) -> JobStatus:
    with app.extensions[EXTENSION_KEY].db.session() as session:
        found = session.scalar(select(Job.status).where(Job.id == job_id))
    assert found is not None
    return found


def _cancel_queued(app: Flask, client_ids: set[int]) -> None:
    """The clients' jobs still queued are canceled, and their running ones waited for."""
    with app.extensions[EXTENSION_KEY].db.session() as session:
        for job_id in session.scalars(
            select(Job.id).where(Job.client_id.in_(client_ids), Job.status == JobStatus.QUEUED)
        ).all():
            jobs.cancel_job(session, job_id, client_id=None)

    def none_running() -> bool:
        with app.extensions[EXTENSION_KEY].db.session() as session:
            running = session.scalar(
                select(Job.id).where(Job.client_id.in_(client_ids), Job.status == JobStatus.RUNNING)
            )
        return running is None

    wait_for("the clients' running jobs to end", none_running, timeout=JOB_SECONDS)


def test_a_new_client_starts_when_the_next_worker_frees_up_despite_a_backlog_of_200(
    stack: Stack,
) -> None:
    a, a_auth = new_client(stack.app)
    b, b_auth = new_client(stack.app)
    try:
        for _ in range(200):
            _post(stack.app, a_auth)
        wait_for("A's jobs to run", lambda: _claims(stack.app, {a}), timeout=JOB_SECONDS)
        b_job = _post(stack.app, b_auth)
        submitted = _created_at(stack.app, b_job)
        wait_for(
            "B's job to start",
            lambda: _status(stack.app, b_job) is not JobStatus.QUEUED,
            timeout=JOB_SECONDS,
            interval=0.05,
        )
        claims = _claims(stack.app, {a, b})
        b_start = next(at for at, _, job_id in claims if job_id == b_job)
        a_between = [job for at, client, job in claims if client == a and submitted <= at < b_start]
        # Only a claim already under way when B's job was committed may come first: one
        # per worker at most; A's backlog of nearly 200 jobs does not.
        assert len(a_between) <= WORKERS, (len(a_between), b_start - submitted)
        a_started = sum(1 for _, client, _ in claims if client == a)
        assert a_started < 150, "A's backlog ran out before B's job: the test proved nothing"
    finally:
        _cancel_queued(stack.app, {a, b})


def test_weights_2_to_1_start_jobs_in_ratio_2_to_1_over_60_jobs(stack: Stack) -> None:
    a, a_auth = new_client(stack.app, weight=2.0)
    b, b_auth = new_client(stack.app, weight=1.0)
    try:
        for index in range(100):  # A 60 and B 40, interleaved: both always have a backlog
            _post(stack.app, a_auth if index % 5 in (0, 2, 4) else b_auth)
        last_submit = utcnow()

        def first_60_after() -> list[tuple[datetime, int, uuid.UUID]] | None:
            after = [claim for claim in _claims(stack.app, {a, b}) if claim[0] > last_submit]
            return after[:60] if len(after) >= 60 else None

        window = wait_for(
            "60 claims after the last submit", first_60_after, timeout=JOB_SECONDS, interval=0.2
        )
        started_a = sum(1 for _, client, _ in window if client == a)
        started_b = len(window) - started_a
        assert started_b > 0
        assert 1.8 <= started_a / started_b <= 2.2, (started_a, started_b)
    finally:
        _cancel_queued(stack.app, {a, b})


def test_a_priority_10_job_starts_before_its_clients_priority_0_jobs(stack: Stack) -> None:
    c, auth = new_client(stack.app)
    try:
        normal = [_post(stack.app, auth, priority=0) for _ in range(12)]
        urgent = _post(stack.app, auth, priority=10)
        submitted = _created_at(stack.app, urgent)
        wait_for(
            "the priority 10 job to start",
            lambda: _status(stack.app, urgent) is not JobStatus.QUEUED,
            timeout=JOB_SECONDS,
            interval=0.05,
        )
        claims = _claims(stack.app, {c})
        urgent_start = next(at for at, _, job_id in claims if job_id == urgent)
        before = [job for at, _, job in claims if job in normal and submitted <= at < urgent_start]
        assert len(before) <= WORKERS, len(before)  # only claims under way at its submit
        wait_for(
            "the priority 0 jobs to start",
            lambda: all(_status(stack.app, job) is not JobStatus.QUEUED for job in normal),
            timeout=JOB_SECONDS,
            interval=0.2,
        )
        after = [job for at, _, job in _claims(stack.app, {c}) if at > urgent_start]
        assert len(after) >= 3, "every priority 0 job had started: the test proved nothing"
    finally:
        _cancel_queued(stack.app, {c})


def test_the_workers_leave_jobs_of_another_key_space_to_their_own_message(
    stack: Stack, tmp_path: Path
) -> None:
    """A queued job committed for another key space (another deployment on the same
    database) is not chosen by these workers, though its client is next in fair order."""
    other, other_auth = new_client(stack.app)
    mine, mine_auth = new_client(stack.app)
    env = limited_env(
        stack.app.extensions[EXTENSION_KEY].settings.database_url,
        stack.app.extensions[EXTENSION_KEY].settings.redis_url,
        f"elsewhere-{secrets.token_hex(3)}:",
        tmp_path / "data",
    )
    with limited_app(env) as elsewhere:
        foreign = _post(elsewhere, other_auth)
    try:
        job = _post(stack.app, mine_auth)
        wait_for(
            "this key space's job to succeed",
            lambda: _status(stack.app, job) is JobStatus.SUCCEEDED,
            timeout=JOB_SECONDS,
        )
        assert _status(stack.app, foreign) is JobStatus.QUEUED
    finally:
        _cancel_queued(stack.app, {other, mine})
