"""Faults: a job that computes past STYLEQUEUE_MAX_RUN_SECONDS is stopped and fails
with error code ``timeout``, in-process with the real engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from service_helpers import store_job, worker_context
from sqlalchemy import select

from shared.auth import create_client
from shared.models import Job, JobEvent, JobStatus
from worker.context import WorkerContext
from worker.runner import TIMEOUT_ERROR_CODE, Outcome, run_job

pytestmark = pytest.mark.slow

MAX_RUN_SECONDS = 1.0


@pytest.fixture
def ctx(database_url: str, tmp_path: Path) -> Iterator[WorkerContext]:
    with worker_context(
        database_url, tmp_path, checkpoint_seconds=0.2, max_run_seconds=MAX_RUN_SECONDS
    ) as context:
        yield context


def test_a_job_past_the_maximum_run_time_fails_with_timeout(ctx: WorkerContext) -> None:
    ctx.network()  # loading the weights is not the job's run time
    iterations = 5000  # far more than a second's worth at 32 px
    with ctx.db.session() as session:
        client, _ = create_client(session, "timeout")
        job_id = store_job(session, ctx.storage, client.id, iterations=iterations)

    assert run_job(ctx, job_id) is Outcome.FAILED

    with ctx.db.session() as session:
        row = session.get(Job, job_id)
        assert row is not None
        assert row.status is JobStatus.FAILED
        assert row.error_code == TIMEOUT_ERROR_CODE == "timeout"
        assert row.error_message is not None and "maximum run time" in row.error_message
        assert 0 < row.iteration < iterations, "stopped mid-run, not at the end"
        kinds = list(
            session.scalars(
                select(JobEvent.kind).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
            )
        )
    assert kinds[-1] == "failed"
    checkpoints = [p for p in ctx.storage.job_dir(job_id).iterdir() if "checkpoint" in p.name]
    assert not checkpoints, "a failed job keeps no checkpoint"
