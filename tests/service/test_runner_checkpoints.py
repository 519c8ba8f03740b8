"""A checkpoint the next attempt cannot resume from is not the job's fault: the worker starts
over and the job succeeds, whether the file is torn, of another state format, saved for other
parameters, or gone. In-process with the real engine, on each database backend."""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from service_helpers import store_job, worker_context
from sqlalchemy import select

from shared import jobs, leases
from shared.auth import create_client
from shared.errors import ParameterError
from shared.models import Job, JobEvent, JobStatus
from shared.storage import checkpoint_file
from worker.context import WorkerContext
from worker.engine import EngineState
from worker.engine.errors import CheckpointIncompatibleError
from worker.runner import Outcome, run_job

ITERATIONS = 3


@pytest.fixture
def ctx(database_url: str, tmp_path: Path) -> Iterator[WorkerContext]:
    with worker_context(database_url, tmp_path) as context:
        yield context


def saved(blob: dict[str, object]) -> bytes:
    buffer = io.BytesIO()
    torch.save(blob, buffer)
    return buffer.getvalue()


def for_other_parameters() -> bytes:
    """A state that loads, saved by a run with other parameters and inputs."""
    return EngineState(
        iteration=1,
        scale=0,
        pass_iteration=1,
        elapsed_seconds=0.1,
        image=torch.rand(1, 3, 8, 8),
        optimizer={},
        fingerprint={"params": {"size": 8}, "weights": "other", "content_shape": [3, 8, 8]},
    ).to_bytes()


def a_job_whose_first_attempt_died_after_a_checkpoint(
    ctx: WorkerContext, data: bytes | None
) -> uuid.UUID:
    """The row names the first attempt's checkpoint (``data``; None: the file is gone),
    and that attempt's worker died."""
    with ctx.db.session() as session:
        client, _ = create_client(session, f"checkpoints-{uuid.uuid4().hex[:8]}")
        job_id = store_job(session, ctx.storage, client.id, iterations=ITERATIONS)
        claim = jobs.claim_job(
            session, job_id, worker="gone@h", lease_seconds=30.0, pid=1, hostname="h"
        )
        assert claim is not None
        name = checkpoint_file(claim.attempt, 1)
        ctx.storage.put(job_id, name, b"placeholder", durable=True)
        leases.record_checkpoint(session, claim, iteration=1, name=name)
        if data is None:
            ctx.storage.delete(job_id, name)
        else:
            ctx.storage.put(job_id, name, data, durable=True)
        ended = leases.expire_lease_of_dead_worker(
            session, job_id, worker="gone@h", pid=1, hostname="h"
        )
        assert ended == 1
    return job_id


@pytest.mark.parametrize(
    ("checkpoint", "loads"),
    [
        pytest.param(b"torn: half a checkpoint", False, id="torn"),
        pytest.param(saved({"format": 999, "iteration": 1}), False, id="another-format"),
        pytest.param(None, False, id="gone"),
        pytest.param(for_other_parameters(), True, id="other-parameters"),
    ],
)
def test_a_checkpoint_that_cannot_be_resumed_is_started_over(
    ctx: WorkerContext,
    caplog: pytest.LogCaptureFixture,
    checkpoint: bytes | None,
    loads: bool,
) -> None:
    job_id = a_job_whose_first_attempt_died_after_a_checkpoint(ctx, checkpoint)
    caplog.set_level(logging.WARNING, logger="worker.runner")

    assert run_job(ctx, job_id) is Outcome.SUCCEEDED
    with ctx.db.session() as session:
        row = session.get(Job, job_id)
        assert row is not None and row.status is JobStatus.SUCCEEDED
        assert row.attempts == 2 and row.iteration == ITERATIONS
        assert row.error_code is None
        query = select(JobEvent.kind).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        kinds = list(session.scalars(query))
    # A state that loads is resumed from, then refused by the engine; the others never load.
    assert ("resumed" in kinds) is loads, kinds
    assert kinds[-1] == "succeeded"
    discarded = [r for r in caplog.records if getattr(r, "event", None) == "checkpoint_discarded"]
    assert len(discarded) == 1, [r.getMessage() for r in caplog.records]
    assert getattr(discarded[0], "attempt", None) == 2


def test_a_state_of_another_format_is_incompatible_and_names_resume() -> None:
    with pytest.raises(CheckpointIncompatibleError) as info:
        EngineState.from_bytes(saved({"format": 999}))
    assert isinstance(info.value, ParameterError) and info.value.field == "resume"
    assert "format 999" in info.value.message
