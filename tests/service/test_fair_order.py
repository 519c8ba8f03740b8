"""The fair order of the claim (shared.fair_share) on a real database, PostgreSQL and
SQLite: weights, priority, no credit for idle time, running limits, key spaces, and the
message's own job as the last resort. Each test has a key space (queue name) of its own,
so the run's other queued jobs are not among its candidates."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared import fair_share, submissions
from shared.auth import create_client
from shared.models import ApiClient, Job, JobStatus, utcnow
from shared.params import parse_params
from shared.storage import LocalStorage

LEASE = 30.0

NewJob = Callable[..., uuid.UUID]


@pytest.fixture
def queue() -> str:
    return f"fair-{secrets.token_hex(4)}:"


@pytest.fixture
def new_job(session: Session, storage: LocalStorage, queue: str) -> NewJob:
    def create(client_id: int, *, priority: int = 0, queue_name: str | None = None) -> uuid.UUID:
        job, _ = submissions.create_job(
            session,
            storage,
            client_id=client_id,
            params=parse_params({"size": 32, "iterations": 2}),
            content=b"content",
            styles=[b"style"],
            idempotency_key=None,
            enqueue=lambda _job_id: None,
            priority=priority,
            queue_name=queue if queue_name is None else queue_name,
        )
        return job.id

    return create


def new_client(session: Session, weight: float = 1.0, max_running: int | None = None) -> int:
    client, _ = create_client(session, f"fair-{secrets.token_hex(3)}")
    client.weight = weight
    client.max_running = max_running
    session.commit()
    return client.id


def claim(session: Session, queue: str, message: uuid.UUID | None = None) -> uuid.UUID | None:
    """One delivery: the job it claims (None: nothing). ``message``: the job it names."""
    found = fair_share.claim_next(
        session,
        message or uuid.uuid4(),
        worker=f"w/{secrets.token_hex(2)}",
        lease_seconds=LEASE,
        max_attempts=3,
        queue_name=queue,
    )
    return None if found is None else found.job_id


def client_of(session: Session, job_id: uuid.UUID | None) -> int:
    found = session.scalar(select(Job.client_id).where(Job.id == job_id))
    assert found is not None
    return found


def test_weights_2_to_1_start_two_jobs_for_one(
    session: Session, new_job: NewJob, queue: str
) -> None:
    a, b = new_client(session, weight=2.0), new_client(session, weight=1.0)
    for _ in range(10):
        new_job(a)
        new_job(b)
    started = [client_of(session, claim(session, queue)) for _ in range(12)]
    assert started.count(a) == 8 and started.count(b) == 4, started
    # Never two of B in a row, never more than two of A in a row: interleaved, not batched.
    runs = "".join("a" if c == a else "b" for c in started)
    assert "bb" not in runs and "aaa" not in runs, runs


def test_a_new_client_goes_next_and_an_idle_client_gets_no_credit(
    session: Session, new_job: NewJob, queue: str
) -> None:
    a, b = new_client(session), new_client(session)
    for _ in range(30):
        new_job(a)
    new_job(b)
    assert client_of(session, claim(session, queue)) in (a, b)
    first = [client_of(session, claim(session, queue)) for _ in range(2)]
    assert b in first  # B's one job started within two claims of A's backlog
    for _ in range(10):
        assert client_of(session, claim(session, queue)) == a  # B idle: A alone
    for _ in range(4):
        new_job(b)
    started = [client_of(session, claim(session, queue)) for _ in range(6)]
    # B comes back at the current virtual time: it alternates with A, with no run of
    # ten for the time it was idle.
    assert started.count(b) == 3, started


def test_priority_orders_a_clients_own_jobs_then_age(
    session: Session, new_job: NewJob, queue: str
) -> None:
    a = new_client(session)
    low = new_job(a, priority=-5)
    normal = [new_job(a) for _ in range(3)]
    urgent = new_job(a, priority=10)
    assert claim(session, queue) == urgent
    assert [claim(session, queue) for _ in range(3)] == normal  # oldest first
    assert claim(session, queue) == low
    assert claim(session, queue) is None


def test_a_client_at_its_running_limit_is_passed_over(
    session: Session, new_job: NewJob, queue: str
) -> None:
    a, b = new_client(session, max_running=1), new_client(session)
    a_jobs = [new_job(a) for _ in range(3)]
    b_jobs = [new_job(b) for _ in range(3)]
    assert claim(session, queue) == a_jobs[0]
    # A's next message (it names A's job) starts B's jobs instead: A has its one running.
    assert [claim(session, queue, a_jobs[1]) for _ in range(3)] == b_jobs
    assert claim(session, queue, a_jobs[1]) is None  # nothing claimable: a no-op


def test_only_the_workers_key_space_but_the_message_own_job_as_last_resort(
    session: Session, new_job: NewJob, queue: str
) -> None:
    a = new_client(session)
    elsewhere = new_job(a, queue_name=f"other-{secrets.token_hex(3)}:")
    mine = new_job(a)
    assert claim(session, queue, elsewhere) == mine  # the fair order: this key space's
    assert claim(session, queue) is None  # another key space's job is not chosen...
    assert claim(session, queue, elsewhere) == elsewhere  # ...but its own message takes it


def test_a_row_that_names_no_key_space_is_started_by_its_own_message(
    session: Session, new_job: NewJob, queue: str
) -> None:
    a = new_client(session)
    mine = new_job(a)
    legacy = new_job(a, queue_name="")  # from before key spaces were recorded
    assert claim(session, queue, legacy) == legacy, "not another job: none else can start it"
    assert claim(session, queue, uuid.uuid4()) == mine


def test_a_lease_that_ran_out_is_claimed_again_in_fair_order(
    session: Session, new_job: NewJob, queue: str
) -> None:
    a = new_client(session)
    job = new_job(a)
    assert claim(session, queue) == job
    session.execute(update(Job).where(Job.id == job).values(lease_expires_at=utcnow()))
    session.commit()
    later = new_job(a)
    assert claim(session, queue) == job  # running under a lease that ran out: claimable
    assert claim(session, queue) == later
    row = session.get(Job, job)
    assert row is not None and row.status is JobStatus.RUNNING and row.attempts == 2


def test_each_start_moves_the_clients_tag(session: Session, new_job: NewJob, queue: str) -> None:
    a = new_client(session, weight=4.0)
    for _ in range(3):
        new_job(a)
    before = fair_share.virtual_time(session)
    for _ in range(3):
        claim(session, queue)
    session.expire_all()
    tag = session.scalar(select(ApiClient.fair_tag).where(ApiClient.id == a))
    assert tag is not None and tag >= before + 0.5 - 1e-9  # three starts: 0, +1/4, +1/2
