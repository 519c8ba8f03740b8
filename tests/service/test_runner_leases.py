"""The worker's glue, in-process with the real engine: a lost lease stops a run, and the next
attempt resumes from the last checkpoint instead of starting over: no attempt outlives its lease,
and work already done is not thrown away."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import service_helpers
from service_helpers import store_job, worker_context
from sqlalchemy import select, update

from shared import jobs, submissions
from shared.auth import create_client
from shared.models import Job, JobEvent, JobStatus, utcnow
from shared.params import parse_params
from worker.context import WorkerContext
from worker.runner import Outcome, run_job

pytestmark = pytest.mark.slow

WAIT_SECONDS = 60.0


@pytest.fixture
def ctx(database_url: str, tmp_path: Path) -> Iterator[WorkerContext]:
    with worker_context(
        database_url, tmp_path, checkpoint_seconds=0.3, preview_seconds=0.3, lease_seconds=30.0
    ) as context:
        yield context


class Background:
    """run_job in a thread, as the Celery task would run it."""

    def __init__(self, ctx: WorkerContext, job_id: uuid.UUID) -> None:
        self.outcome: Outcome | None = None
        self._thread = threading.Thread(target=self._run, args=(ctx, job_id))
        self._thread.start()

    def _run(self, ctx: WorkerContext, job_id: uuid.UUID) -> None:
        self.outcome = run_job(ctx, job_id)

    def join(self) -> Outcome | None:
        self._thread.join(WAIT_SECONDS)
        assert not self._thread.is_alive(), "the run did not stop"
        return self.outcome


def wait_for(what: str, found: Callable[[], Any]) -> Any:
    return service_helpers.wait_for(what, found, timeout=WAIT_SECONDS)


def checkpoint_named(ctx: WorkerContext, job_id: uuid.UUID) -> str | None:
    with ctx.db.session() as s:
        row = s.get(Job, job_id)
        assert row is not None
        return row.checkpoint_file


def checkpoint_files(ctx: WorkerContext, job_id: uuid.UUID) -> list[str]:
    return [p.name for p in ctx.storage.job_dir(job_id).iterdir() if "checkpoint" in p.name]


def test_lost_lease_stops_the_run_and_the_next_attempt_resumes_from_the_checkpoint(
    ctx: WorkerContext,
) -> None:
    with ctx.db.session() as session:
        client, _ = create_client(session, "runner")
        job_id = store_job(session, ctx.storage, client.id, iterations=3000)

    def event(kind: str) -> JobEvent | None:
        with ctx.db.session() as s:
            query = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == kind)
            return s.scalars(query.order_by(JobEvent.id.desc())).first()

    def expire_lease() -> None:
        with ctx.db.session() as s:
            past = utcnow() - timedelta(seconds=1)
            s.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=past))
            s.commit()

    first = Background(ctx, job_id)
    checkpoint = wait_for("a checkpoint", lambda: event("checkpoint"))
    named = checkpoint_named(ctx, job_id)
    assert named is not None and named.startswith("checkpoint.a1.")
    assert ctx.storage.exists(job_id, named)

    # Another worker takes the job over (as if this one had stalled past its lease).
    def steal() -> jobs.Claim | None:
        expire_lease()  # the lease thread may renew it in between: then again
        with ctx.db.session() as s:
            return jobs.claim_job(s, job_id, worker="thief", lease_seconds=30.0)

    thief = wait_for("the takeover", steal)
    assert thief.attempt == 2
    assert first.join() is Outcome.LEASE_LOST
    with ctx.db.session() as s:
        row = s.get(Job, job_id)
        assert row is not None
        assert row.status is JobStatus.RUNNING and row.lease_owner == "thief"

    # The thief dies in turn; the next attempt continues from the checkpoint.
    expire_lease()
    second = Background(ctx, job_id)
    resumed = wait_for("the resumed attempt", lambda: event("resumed"))
    assert resumed.attempt == 3
    assert resumed.data["iteration"] >= checkpoint.data["iteration"] > 0
    with ctx.db.session() as s:
        jobs.cancel_job(s, job_id, client_id=None)
    assert second.join() is Outcome.CANCELED
    with ctx.db.session() as s:
        row = s.get(Job, job_id)
        assert row is not None and row.status is JobStatus.CANCELED
        assert row.iteration >= resumed.data["iteration"]
        assert row.checkpoint_file is None
    assert not checkpoint_files(ctx, job_id), "a finished job keeps no checkpoint"


def test_a_worker_cut_off_from_the_database_stops_when_its_lease_runs_out(
    ctx: WorkerContext, tmp_path: Path
) -> None:
    from shared.db import Database
    from worker.engine import Progress
    from worker.reporter import JobReporter

    with ctx.db.session() as session:
        client, _ = create_client(session, "cut-off")
        job, _ = submissions.create_job(
            session,
            ctx.storage,
            client_id=client.id,
            params=parse_params({"size": 32, "iterations": 100, "scales": 1}),
            content=b"c",
            styles=[b"s"],
            idempotency_key=None,
            enqueue=lambda _id: None,
        )
        claim = jobs.claim_job(session, job.id, worker="w", lease_seconds=30.0)
    assert claim is not None
    unreachable = Database(f"sqlite:///{tmp_path}/no/such/dir/db.sqlite3")
    quiet = replace(
        ctx, settings=replace(ctx.settings, preview_seconds=1e9, checkpoint_seconds=1e9)
    )
    clock = [1000.0]
    with unreachable.session() as dead_session:
        reporter = JobReporter(quiet, dead_session, claim, clock=lambda: clock[0])

        def step(iteration: int) -> None:
            reporter.on_progress(
                Progress(
                    iteration=iteration,
                    iterations=100,
                    scale=0,
                    scales=1,
                    loss=1.0,
                    content_loss=0.5,
                    style_loss=0.5,
                    tv_loss=0.0,
                    elapsed_seconds=0.0,
                    eta_seconds=None,
                    _image=lambda: pytest.fail("no preview expected"),
                    _state=lambda: pytest.fail("no checkpoint expected"),
                )
            )

        reporter.renew(dead_session)  # the renewal fails: keep going while the lease lasts
        step(1)
        assert not reporter.should_stop()
        clock[0] += ctx.settings.lease_seconds - 1
        reporter.renew(dead_session)
        step(2)
        assert not reporter.should_stop()
        clock[0] += 2  # past the lease it last renewed: stop before anyone else may claim it
        step(3)
        assert reporter.should_stop() and reporter.lease_lost
    unreachable.dispose()
