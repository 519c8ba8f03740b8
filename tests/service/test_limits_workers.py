"""Where jobs start and end: a client's max running with two real Celery workers, and a
job's deadline (Cancel-After) ending it queued (the reconciler's sweep, a claim) and
running (its worker), on PostgreSQL and Redis."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fault_helpers import WorkerProcess
from flask import Flask
from limits_helpers import limited_app, limited_env, new_client, post_job
from service_helpers import wait_for
from sqlalchemy import select

from api.services import EXTENSION_KEY
from shared import jobs, reconciler
from shared.models import EventKind, JobEvent, utcnow

pytestmark = pytest.mark.slow

JOB_SECONDS = 120.0


@dataclass(frozen=True)
class Stack:
    app: Flask
    workers: list[WorkerProcess]


@pytest.fixture(scope="module")
def stack(
    postgresql_url: str, redis_url: str, redis_prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """Two workers (one job each at a time) and an in-process API, one database and key space."""
    base = tmp_path_factory.mktemp("limits-workers")
    env = limited_env(postgresql_url, redis_url, f"{redis_prefix}limits-workers:", base / "data")
    workers: list[WorkerProcess] = []
    try:
        for index in range(2):
            name = f"limits{index}-{secrets.token_hex(2)}"
            workers.append(WorkerProcess(env, base / f"{name}.log", name))
        with limited_app(env) as app:
            yield Stack(app, workers)
    finally:
        for worker in workers:
            worker.stop()


def _post(app: Flask, auth: dict[str, str], params: dict[str, Any], **headers: str) -> str:
    answer = app.test_client().post(
        "/v1/jobs",
        data=_form(params),
        headers={**auth, **headers},
        content_type="multipart/form-data",
    )
    assert answer.status_code == 202, answer.json
    job_id: str = answer.json["id"]
    return job_id


def _form(params: dict[str, Any]) -> dict[str, Any]:
    import io
    import json

    from limits_helpers import DATA

    return {
        "content": (io.BytesIO((DATA / "tubingen.png").read_bytes()), "content.png"),
        "style": [(io.BytesIO((DATA / "starry_night.png").read_bytes()), "style.png")],
        # Computed, each: two identical queued jobs would share one run (in-flight sharing).
        "params": json.dumps(params),
        "cache": "false",
    }


def _job(app: Flask, auth: dict[str, str], job_id: str) -> dict[str, Any]:
    found: dict[str, Any] = app.test_client().get(f"/v1/jobs/{job_id}", headers=auth).json
    return found


def _events(app: Flask, job_id: str) -> list[JobEvent]:
    with app.extensions[EXTENSION_KEY].db.session() as session:
        return list(
            session.scalars(
                select(JobEvent)
                .where(JobEvent.job_id == uuid.UUID(job_id))
                .order_by(JobEvent.at, JobEvent.id)
            )
        )


def _at(events: list[JobEvent], kind: EventKind) -> datetime:
    return next(event.at for event in events if event.kind == kind.value)


def test_two_jobs_of_a_client_with_max_running_1_never_run_together_and_both_finish(
    stack: Stack,
) -> None:
    _, auth = new_client(stack.app, max_running=1, rate_limit=0, max_queued=0)
    params = {"size": 32, "iterations": 150, "scales": 1}
    first, second = _post(stack.app, auth, params), _post(stack.app, auth, params)
    for job_id in (first, second):
        wait_for(
            f"job {job_id} to succeed",
            lambda job_id=job_id: _job(stack.app, auth, job_id)["status"] == "succeeded",
            timeout=JOB_SECONDS,
            interval=0.2,
        )
    spans = []
    for job_id in (first, second):
        events = _events(stack.app, job_id)
        claims = [e for e in events if e.kind == EventKind.CLAIMED.value]
        assert len(claims) == 1, [e.kind for e in events]  # never claimed, then dropped
        spans.append((_at(events, EventKind.CLAIMED), _at(events, EventKind.SUCCEEDED)))
    (a_start, a_end), (b_start, b_end) = sorted(spans)
    assert b_start >= a_end, spans  # one after the other, never both running
    # Both workers were idle: the second job's message found the client at its limit, and
    # the first job's worker sent it again as soon as it ended (not the reconciler, 300 s).
    assert (b_start - a_end).total_seconds() < 10, spans
    skipped = sum(w.log().count("is not claimable") for w in stack.workers)
    assert skipped >= 1, "the limit was never met: both jobs went to one worker in turn"


def test_a_running_job_past_its_deadline_is_canceled_by_its_worker(stack: Stack) -> None:
    _, auth = new_client(stack.app, rate_limit=0, max_queued=0)
    long_job = {"size": 32, "iterations": 5000, "scales": 1}
    job_id = _post(stack.app, auth, long_job, **{"Cancel-After": "4"})
    wait_for(
        "the job to run",
        lambda: _job(stack.app, auth, job_id)["status"] in ("running", "canceled"),
        timeout=JOB_SECONDS,
        interval=0.1,
    )
    done = wait_for(
        "the job to end",
        lambda: (j := _job(stack.app, auth, job_id))["status"] != "running" and j,
        timeout=JOB_SECONDS,
        interval=0.1,
    )
    assert done["status"] == "canceled", done
    assert done["error"]["code"] == "deadline_exceeded", done
    assert done["started_at"] is not None  # it was running when its deadline passed
    assert 0 < done["progress"]["iteration"] < 5000
    late = datetime.fromisoformat(done["finished_at"]) - datetime.fromisoformat(done["deadline_at"])
    assert 0 <= late.total_seconds() < 5, done
    events = _events(stack.app, job_id)
    canceled = [e for e in events if e.kind == EventKind.CANCELED.value]
    assert len(canceled) == 1 and canceled[0].worker is not None  # written by its worker


@pytest.fixture
def lonely_app(
    database_url: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> Iterator[Flask]:
    """An API whose key space no worker listens to: its jobs stay queued."""
    env = limited_env(
        database_url, redis_url, f"{redis_prefix}lonely-{secrets.token_hex(3)}:", tmp_path
    )
    with limited_app(env) as app:
        yield app


def test_a_queued_job_past_its_deadline_is_canceled_by_the_reconciler(lonely_app: Flask) -> None:
    _, auth = new_client(lonely_app)
    answer = post_job(lonely_app, auth, {"Cancel-After": "0.5"})
    assert answer.status_code == 202
    job_id = answer.json["id"]
    plain_id = post_job(lonely_app, auth).json["id"]
    svc = lonely_app.extensions[EXTENSION_KEY]
    with svc.db.session() as session:
        assert uuid.UUID(job_id) not in reconciler.cancel_jobs_past_deadline(session, svc.storage)

        def swept() -> bool:
            return uuid.UUID(job_id) in reconciler.cancel_jobs_past_deadline(session, svc.storage)

        wait_for("the sweep to cancel the job", swept, timeout=10, interval=0.1)
    done = _job(lonely_app, auth, job_id)
    assert done["status"] == "canceled" and done["error"]["code"] == "deadline_exceeded", done
    assert done["started_at"] is None
    canceled = [e for e in _events(lonely_app, job_id) if e.kind == EventKind.CANCELED.value]
    assert canceled[0].data["while"] == "queued"
    assert _job(lonely_app, auth, plain_id)["status"] == "queued"  # no deadline, left alone


def test_a_claim_cancels_a_job_past_its_deadline_instead_of_running_it(lonely_app: Flask) -> None:
    _, auth = new_client(lonely_app)
    job_id = post_job(lonely_app, auth, {"Cancel-After": "0.2"}).json["id"]
    svc = lonely_app.extensions[EXTENSION_KEY]
    deadline = datetime.fromisoformat(_job(lonely_app, auth, job_id)["deadline_at"])
    wait_for("the deadline to pass", lambda: utcnow() > deadline, timeout=5)
    with svc.db.session() as session:
        claim = jobs.claim_job(session, uuid.UUID(job_id), worker="late@test", lease_seconds=30)
    assert claim is None
    done = _job(lonely_app, auth, job_id)
    assert done["status"] == "canceled" and done["error"]["code"] == "deadline_exceeded", done
    assert done["attempts"] == 0
