"""Which jobs join a worker's batch (shared.fair_share.claim_batch_members), on a real
database, PostgreSQL and SQLite: the next jobs of the fair order while they have the
batch's output shape and fit its memory, never one past the job whose turn it is.

Each test has a key space (queue name) of its own, so the run's other queued jobs are
not among its candidates. The submit's output shape (``jobs.batch_shape``) is checked
through the real API in ``test_batch_workers.py``; here rows get the shape a test names.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared import fair_share, submissions
from shared.auth import create_client
from shared.memory_estimate import batch_member_bytes, batch_peak_bytes, estimate_peak_bytes
from shared.models import Job, JobEvent, JobStatus
from shared.params import parse_params
from shared.sizes import batch_shape
from shared.storage import LocalStorage

LEASE = 30.0
PARAMS = parse_params({"size": 32, "iterations": 2})
ESTIMATE = estimate_peak_bytes(PARAMS, (24, 32))  # a 32x24 output, alone, on a GPU

NewJob = Callable[..., uuid.UUID]


@pytest.fixture
def queue() -> str:
    return f"batch-{secrets.token_hex(4)}:"


@pytest.fixture
def client_id(session: Session) -> int:
    client, _ = create_client(session, f"batch-{secrets.token_hex(3)}")
    return client.id


@pytest.fixture
def new_job(session: Session, storage: LocalStorage, queue: str, client_id: int) -> NewJob:
    def create(shape: str | None = "32x24", *, priority: int = 0) -> uuid.UUID:
        job, _ = submissions.create_job(
            session,
            storage,
            client_id=client_id,
            params=PARAMS,
            content=b"content",
            styles=[b"style"],
            idempotency_key=None,
            enqueue=lambda _job_id: None,
            priority=priority,
            queue_name=queue,
            memory_estimate=ESTIMATE,
            batch_shape=shape,
        )
        return job.id

    return create


def first_claim(session: Session, queue: str) -> fair_share.Claim:
    found = fair_share.claim_next(
        session, uuid.uuid4(), worker="w/1", lease_seconds=LEASE, queue_name=queue
    )
    assert found is not None
    return found


def members(
    session: Session,
    queue: str,
    first: uuid.UUID,
    *,
    count: int,
    shape: str = "32x24",
    memory_left: int | None = None,
) -> list[uuid.UUID]:
    claims = fair_share.claim_batch_members(
        session,
        shape=shape,
        count=count,
        memory_left=memory_left,
        batch_with=first,
        worker="w/1",
        lease_seconds=LEASE,
        queue_name=queue,
    )
    return [claim.job_id for claim in claims]


def test_the_submit_shape_is_the_output_size() -> None:
    assert batch_shape(640, 480, 32) == "32x24"
    assert batch_shape(480, 640, 32) == "24x32"
    assert batch_shape(1000, 150, 512) == "512x77"


def test_the_next_jobs_of_the_shape_join_in_fair_order(
    session: Session, new_job: NewJob, queue: str
) -> None:
    jobs = [new_job() for _ in range(4)]
    first = first_claim(session, queue)
    assert first.job_id == jobs[0] and first.batch_shape == "32x24"
    joined = members(session, queue, first.job_id, count=2)
    assert joined == jobs[1:3], "the next two in the fair order, no more than asked"
    for job_id in joined:
        row = session.get(Job, job_id)
        assert row is not None and row.status is JobStatus.RUNNING and row.lease_owner == "w/1"
        [claimed] = session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == "claimed")
        ).all()
        assert claimed.data["batch_with"] == str(first.job_id), "the timeline says whose batch"
    session.rollback()
    assert session.scalar(select(Job.status).where(Job.id == jobs[3])) is JobStatus.QUEUED


def test_a_job_of_another_shape_whose_turn_it_is_ends_the_batch(
    session: Session, new_job: NewJob, queue: str
) -> None:
    a1, other, a2 = new_job(), new_job("24x32"), new_job()
    first = first_claim(session, queue)
    assert first.job_id == a1
    assert members(session, queue, a1, count=3) == [], "a2 does not jump ahead of the other"
    # Once the other shape's job has started, a2 is next and joins a batch of its shape.
    assert first_claim(session, queue).job_id == other
    assert members(session, queue, a1, count=3) == [a2]


def test_rows_from_before_without_a_shape_never_join(
    session: Session, new_job: NewJob, queue: str
) -> None:
    a1 = new_job()
    new_job(None)
    first_claim(session, queue)
    assert members(session, queue, a1, count=3) == []


def test_a_job_that_does_not_fit_the_memory_left_ends_the_batch(
    session: Session, new_job: NewJob, queue: str
) -> None:
    jobs = [new_job() for _ in range(4)]
    first_claim(session, queue)
    share = batch_member_bytes(ESTIMATE)
    assert 0 < share < ESTIMATE, "a job's share of a batch leaves out the run's fixed part"
    joined = members(session, queue, jobs[0], count=3, memory_left=2 * share + share // 2)
    assert joined == jobs[1:3], "two shares fit, the third does not"
    assert members(session, queue, jobs[0], count=3, memory_left=0) == []


def test_a_batch_s_peak_counts_the_fixed_part_once() -> None:
    three = batch_peak_bytes([ESTIMATE, ESTIMATE, ESTIMATE])
    assert three == ESTIMATE + 2 * batch_member_bytes(ESTIMATE)
    # The model's own batch estimate, within the rounding of its integer parts.
    assert abs(three - estimate_peak_bytes(PARAMS, (24, 32), batch=3)) <= 4
    assert batch_peak_bytes([None, None]) == 0
