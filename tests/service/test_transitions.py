"""The state machine's table (shared.models.TRANSITIONS) tells the truth about the
transition functions, and a retry enqueues like a submit and survives a lost race,
on a real database (PostgreSQL and SQLite)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import event, select, update
from sqlalchemy.orm import Session

from shared import jobs, submissions
from shared.auth import create_client
from shared.db import Database
from shared.errors import ConflictError, StylequeueError
from shared.models import (
    TRANSITIONS,
    EventKind,
    Job,
    JobEvent,
    JobStatus,
    utcnow,
)
from shared.params import parse_params
from shared.storage import LocalStorage

LEASE = 30.0
EDGES = {(source, t.target, t.event.value) for t in TRANSITIONS for source in t.sources}


@pytest.fixture
def client_id(session: Session) -> int:
    client, _ = create_client(session, "transitions")
    return client.id


def new_job(
    session: Session, storage: LocalStorage, client_id: int, status: JobStatus
) -> uuid.UUID:
    job, _ = submissions.create_job(
        session,
        storage,
        client_id=client_id,
        params=parse_params({"size": 32, "iterations": 10}),
        content=b"content",
        styles=[b"style"],
        idempotency_key=None,
        enqueue=lambda _job_id: None,
    )
    if status is JobStatus.RUNNING:
        assert jobs.claim_job(session, job.id, worker="w/1", lease_seconds=LEASE) is not None
    elif status is not JobStatus.QUEUED:
        session.execute(
            update(Job).where(Job.id == job.id).values(status=status, finished_at=utcnow())
        )
        session.commit()
    return job.id


def last_event(session: Session, job_id: uuid.UUID) -> str:
    kinds = session.scalars(
        select(JobEvent.kind).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
    )
    return list(kinds)[-1]


def status_of(session: Session, job_id: uuid.UUID) -> JobStatus:
    session.expire_all()
    found = session.get(Job, job_id)
    assert found is not None
    return found.status


ATTEMPTS: dict[str, Callable[[Session, uuid.UUID], object]] = {
    "claim": lambda s, job_id: jobs.claim_job(s, job_id, worker="w/2", lease_seconds=LEASE),
    "cancel": lambda s, job_id: jobs.cancel_job(s, job_id, client_id=None),
    "retry": lambda s, job_id: jobs.retry_job(s, job_id, lambda _job_id: None),
}


@pytest.mark.parametrize("status", list(JobStatus))
@pytest.mark.parametrize("attempt", list(ATTEMPTS))
def test_every_status_change_is_an_edge_of_the_table_with_its_event(
    session: Session, storage: LocalStorage, client_id: int, status: JobStatus, attempt: str
) -> None:
    job_id = new_job(session, storage, client_id, status)
    event_before = last_event(session, job_id)
    try:
        ATTEMPTS[attempt](session, job_id)
    except StylequeueError:
        session.rollback()  # refused (a 409): nothing may have changed
    after = status_of(session, job_id)
    if after is status:
        assert last_event(session, job_id) in (event_before, EventKind.CANCEL_REQUESTED)
    else:
        assert (status, after, last_event(session, job_id)) in EDGES


def test_a_retry_the_broker_cannot_take_stays_queued_with_an_enqueue_failed_event(
    session: Session, storage: LocalStorage, client_id: int
) -> None:
    job_id = new_job(session, storage, client_id, JobStatus.FAILED)

    def broker_down(_job_id: uuid.UUID) -> None:
        raise ConnectionError("redis is down")

    retried = jobs.retry_job(session, job_id, broker_down)
    assert retried.status is JobStatus.QUEUED
    kinds = list(
        session.scalars(
            select(JobEvent.kind).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        )
    )
    assert kinds[-2:] == [EventKind.RETRIED, EventKind.ENQUEUE_FAILED]


@pytest.fixture
def postgres_db(db: Database) -> Iterator[Database]:
    if db.engine.dialect.name != "postgresql":
        # SQLite refuses the losing write outright (its snapshot is stale): no race to lose.
        pytest.skip("a concurrent retry of the same row: PostgreSQL's READ COMMITTED")
    yield db


def test_a_retry_that_loses_the_race_is_a_conflict_saying_what_the_job_is_now(
    postgres_db: Database, storage: LocalStorage
) -> None:
    with postgres_db.session() as session:
        client, _ = create_client(session, "retry-race")
        job_id = new_job(session, storage, client.id, JobStatus.CANCELED)
    sent: list[uuid.UUID] = []
    raced: list[bool] = []

    def retry_first_elsewhere(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if statement.startswith("UPDATE jobs") and not raced:
            raced.append(True)  # another admin's retry commits between the read and the write
            with postgres_db.session() as other:
                jobs.retry_job(other, job_id, sent.append)

    event.listen(postgres_db.engine, "before_cursor_execute", retry_first_elsewhere)
    try:
        with postgres_db.session() as session, pytest.raises(ConflictError) as lost:
            jobs.retry_job(session, job_id, sent.append)
    finally:
        event.remove(postgres_db.engine, "before_cursor_execute", retry_first_elsewhere)
    assert raced, "the other retry ran between this one's read and its write"
    assert lost.value.code == "job_not_retryable"
    assert lost.value.details == {"status": "queued"}
    assert sent == [job_id], "sent once, by the retry that won"
    with postgres_db.session() as session:
        kinds = session.scalars(
            select(JobEvent.kind).where(JobEvent.job_id == job_id, JobEvent.kind == "retried")
        )
        assert list(kinds) == ["retried"]
