"""The job state machine and every business rule on jobs, called by both api/ and worker/.

    queued ──claim──▶ running ──finish──▶ succeeded
      │                 │ ├────fail────▶ failed
      │                 │ └──(cancel requested, worker stops)──▶ canceled
      └─────cancel──────┴──────────────────────────────────────▶ canceled

Every transition is a conditional UPDATE on the row's current state, so two
processes racing for the same job cannot both win: a worker claims a job only if
it is queued (or running under an expired lease: a retry, with the attempt
number incremented), and writes progress or an outcome only while it still
holds the lease (same owner, same attempt number).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, NamedTuple, cast

from psycopg.types.json import Jsonb
from sqlalchemy import (
    ColumnElement,
    Connection,
    Table,
    and_,
    bindparam,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, aliased

from shared.db import CommitOutcomeUnknownError, Database, ThreadConnections
from shared.errors import LeaseLostError, NotFoundError
from shared.models import Job, JobEvent, JobRecord, JobStatus, utcnow
from shared.pagination import Cursor
from shared.params import StyleParams, parse_params
from shared.storage import CONTENT_FILE, LocalStorage, style_file

log = logging.getLogger(__name__)

Enqueue = Callable[[uuid.UUID], None]


class EventKind(StrEnum):
    """The kinds of ``job_events`` rows."""

    CREATED = "created"
    ENQUEUE_FAILED = "enqueue_failed"
    REQUEUED = "requeued"
    CLAIMED = "claimed"
    CHECKPOINT = "checkpoint"
    RESUMED = "resumed"
    CANCEL_REQUESTED = "cancel_requested"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    FILES_DELETED = "files_deleted"
    RELEASED = "released"
    WORKER_LOST = "worker_lost"
    RETRIED = "retried"  # an admin queued a failed or canceled job again


# ---------------------------------------------------------------- client side


def parse_job_id(raw: str) -> uuid.UUID:
    """A job id from a URL; a malformed one is simply a job that does not exist."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise NotFoundError(f"no job {raw!r}", code="job_not_found") from None


def create_job(
    session: Session,
    storage: LocalStorage,
    *,
    client_id: int,
    params: StyleParams,
    content: bytes,
    styles: Sequence[bytes],
    idempotency_key: str | None,
    enqueue: Enqueue,
    driver: ThreadConnections | None = None,
    request_digest: str | None = None,
) -> tuple[Job, bool]:
    """Store a validated job durably, then enqueue its id. Returns (job, created).

    The input files are fsync'ed and the row committed before the id goes to
    Redis. If the enqueue fails the job stays queued for the reconciler: the
    client has its 202 either way. With an ``idempotency_key`` already used by
    this client, the original job is returned and nothing is created. With a
    ``driver`` (PostgreSQL's ``Database.thread_connections``) the rows are
    inserted straight through it, the API's fast path; else through ``session``.
    ``request_digest`` is kept on the row, for a replay with the key to match.
    """
    if idempotency_key is not None:
        existing = find_by_idempotency_key(session, client_id, idempotency_key)
        if existing is not None:
            return existing, False
    job_id = uuid.uuid4()
    files = {CONTENT_FILE: content} | {style_file(i): data for i, data in enumerate(styles)}
    now = utcnow()
    values = _new_job_values(job_id, client_id, params, len(styles), idempotency_key, now)
    values["request_digest"] = request_digest
    try:
        storage.put_many(job_id, files)
        event = _event_values(job_id, EventKind.CREATED, now)
        if driver is not None:
            driver.write(
                [
                    (_INSERT_JOB_SQL, [_driver_value(values[c]) for c in _NEW_JOB_COLUMNS]),
                    (_INSERT_EVENT_SQL, [_driver_value(event[c]) for c in _NEW_EVENT_COLUMNS]),
                ]
            )
        else:
            # Two Core INSERTs: the ORM's unit of work cost as much again as the
            # statements themselves.
            connection = session.connection()
            connection.execute(_INSERT_JOB, values)
            connection.execute(_INSERT_EVENT, event)
            session.commit()
    except IntegrityError:
        session.rollback()
        storage.delete_job_files(job_id)
        if idempotency_key is None:
            raise
        # Another request with the same key committed first: that one is the job.
        existing = find_by_idempotency_key(session, client_id, idempotency_key)
        if existing is None:
            raise
        return existing, False
    except CommitOutcomeUnknownError:
        # The row may be in: its files stay (a job without its inputs would fail).
        # If it is not, they are files no job refers to.
        _rollback_quietly(session)
        raise
    except BaseException:
        _rollback_quietly(session)
        storage.delete_job_files(job_id)
        raise
    _enqueue_or_leave_queued(session, job_id, enqueue)
    return Job(**values), True


def _rollback_quietly(session: Session) -> None:
    # With the database gone the rollback fails too: the first error is the one to raise.
    try:
        session.rollback()
    except SQLAlchemyError:
        log.debug("rollback failed", exc_info=True)


# Built once, like _READ_JOB: the statements every submit runs.
_INSERT_JOB = insert(cast(Table, Job.__table__))
_INSERT_EVENT = insert(cast(Table, JobEvent.__table__))


def _new_job_values(
    job_id: uuid.UUID,
    client_id: int,
    params: StyleParams,
    n_styles: int,
    idempotency_key: str | None,
    now: datetime,
) -> dict[str, Any]:
    # Every column, so that the row is known without reading it back and the
    # returned Job is complete (Core applies no ORM-side defaults here).
    return {
        "id": job_id,
        "client_id": client_id,
        "status": JobStatus.QUEUED,
        "params": params.model_dump(mode="json"),
        "n_styles": n_styles,
        "idempotency_key": idempotency_key,
        "iteration": 0,
        "iterations": params.iterations,
        "percent": 0.0,
        "eta_seconds": None,
        "attempts": 0,
        "worker": None,
        "lease_owner": None,
        "lease_expires_at": None,
        "cancel_requested": False,
        "error_code": None,
        "error_message": None,
        "created_at": now,
        "started_at": None,
        "finished_at": None,
        "updated_at": now,
        "request_digest": None,
    }


def _event_values(job_id: uuid.UUID, kind: EventKind, now: datetime) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "kind": kind.value,
        "attempt": 0,
        "worker": None,
        "at": now,
        "data": {},
    }


# The same two INSERTs in the driver's own SQL (PostgreSQL, %s placeholders).
_NEW_JOB_COLUMNS = tuple(_new_job_values(uuid.UUID(int=0), 0, parse_params({}), 1, None, utcnow()))
_NEW_EVENT_COLUMNS = tuple(_event_values(uuid.UUID(int=0), EventKind.CREATED, utcnow()))
_INSERT_JOB_SQL = (
    f"INSERT INTO jobs ({', '.join(_NEW_JOB_COLUMNS)}) "
    f"VALUES ({', '.join(['%s'] * len(_NEW_JOB_COLUMNS))})"
)
_INSERT_EVENT_SQL = (
    f"INSERT INTO job_events ({', '.join(_NEW_EVENT_COLUMNS)}) "
    f"VALUES ({', '.join(['%s'] * len(_NEW_EVENT_COLUMNS))})"
)


def _driver_value(value: Any) -> Any:
    # What SQLAlchemy's column types do on the way in: enums as their value,
    # dicts as JSONB.
    if isinstance(value, dict):
        return Jsonb(value)
    if isinstance(value, StrEnum):
        return value.value
    return value


def _enqueue_or_leave_queued(session: Session, job_id: uuid.UUID, enqueue: Enqueue) -> None:
    try:
        enqueue(job_id)
    except Exception as exc:  # the broker is down: the reconciler will enqueue it later
        log.warning("job %s committed but not enqueued (%s); left for the reconciler", job_id, exc)
        try:
            session.add(
                JobEvent(job_id=job_id, kind=EventKind.ENQUEUE_FAILED, data={"error": repr(exc)})
            )
            session.commit()
        except Exception:
            session.rollback()
            log.exception("could not record the failed enqueue of job %s", job_id)


def find_by_idempotency_key(session: Session, client_id: int, key: str) -> Job | None:
    """The job this client created with this Idempotency-Key, if any."""
    return session.scalars(
        select(Job).where(Job.client_id == client_id, Job.idempotency_key == key)
    ).one_or_none()


def get_job(session: Session, job_id: uuid.UUID, *, client_id: int | None) -> Job:
    """The job, if it exists and belongs to ``client_id`` (None: any client, for admins)."""
    job = session.get(Job, job_id)
    if job is None or (client_id is not None and job.client_id != client_id):
        # Another client's job is indistinguishable from a missing one.
        raise NotFoundError(f"no job {job_id}", code="job_not_found")
    return job


# Built once: constructing the statement would cost as much as running it.
_READ_JOB = select(Job.__table__).where(Job.__table__.c.id == bindparam("job_id"))


def read_job(connection: Connection, job_id: uuid.UUID, *, client_id: int | None) -> JobRecord:
    """Like ``get_job`` but a plain row, read without the ORM: the poll's fast path."""
    row = connection.execute(_READ_JOB, {"job_id": job_id}).one_or_none()
    if row is None or (client_id is not None and row.client_id != client_id):
        raise NotFoundError(f"no job {job_id}", code="job_not_found")
    return cast(JobRecord, row)


class PolledJob(NamedTuple):
    """The columns a job's JSON needs (the JobRecord protocol), read by ``poll_job``."""

    id: uuid.UUID
    client_id: int
    status: JobStatus
    params: dict[str, Any]
    iteration: int
    iterations: int
    percent: float
    eta_seconds: float | None
    attempts: int
    worker: str | None
    error_code: str | None
    error_message: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


_POLL_JOB_SQL = f"SELECT {', '.join(PolledJob._fields)} FROM jobs WHERE id = %s"


def poll_job(db: Database, job_id: uuid.UUID, *, client_id: int | None) -> JobRecord:
    """Like ``read_job``, on the cheapest path there is: every poll comes here.

    On PostgreSQL, one prepared SELECT on this thread's own driver connection
    (``Database.thread_connections``); elsewhere the Core read.
    """
    if db.thread_connections is None:
        with db.read_engine.connect() as connection:
            return read_job(connection, job_id, client_id=client_id)
    row = db.thread_connections.fetch_one(_POLL_JOB_SQL, (job_id,))
    if row is None or (client_id is not None and row[1] != client_id):
        raise NotFoundError(f"no job {job_id}", code="job_not_found")
    job = PolledJob._make(row)
    # The driver returns the status as text (and timestamps in the session's zone:
    # the JSON converts them to UTC).
    return job._replace(status=JobStatus(job.status))


@dataclass(frozen=True)
class JobPage:
    jobs: list[Job]
    next_cursor: str | None


def list_jobs(
    session: Session,
    *,
    client_id: int,
    status: JobStatus | None,
    limit: int,
    cursor: Cursor | None,
) -> JobPage:
    """A client's jobs, newest first, one keyset page at a time."""
    query = select(Job).where(Job.client_id == client_id)
    if status is not None:
        query = query.where(Job.status == status)
    if cursor is not None:
        query = query.where(
            or_(
                Job.created_at < cursor.created_at,
                and_(Job.created_at == cursor.created_at, Job.id < cursor.job_id),
            )
        )
    query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    rows = list(session.scalars(query))
    if len(rows) <= limit:
        return JobPage(rows, None)
    last = rows[limit - 1]
    return JobPage(rows[:limit], Cursor(last.created_at, last.id).encode())


def cancel_job(session: Session, job_id: uuid.UUID, *, client_id: int | None) -> Job:
    """Cancel a job; idempotent. Queued: canceled at once. Running: the worker is told to stop.

    A finished job is returned unchanged.
    """
    get_job(session, job_id, client_id=client_id)  # 404 before anything changes
    now = utcnow()
    canceled_queued = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(status=JobStatus.CANCELED, finished_at=now, updated_at=now)
    )
    if _rowcount(canceled_queued):
        session.add(JobEvent(job_id=job_id, kind=EventKind.CANCELED, data={"while": "queued"}))
    else:
        flagged = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.RUNNING, ~Job.cancel_requested)
            .values(cancel_requested=True, updated_at=now)
        )
        if _rowcount(flagged):
            session.add(JobEvent(job_id=job_id, kind=EventKind.CANCEL_REQUESTED))
    session.commit()
    job = get_job(session, job_id, client_id=client_id)
    session.refresh(job)
    return job


# ---------------------------------------------------------------- worker side


@dataclass(frozen=True)
class Claim:
    """A worker's hold on a job: valid while the row has this owner and attempt number."""

    job_id: uuid.UUID
    worker: str
    attempt: int
    params: dict[str, Any]
    n_styles: int
    # The committed checkpoint and preview when the claim was made (None: none yet).
    # Only the lease holder changes them, so the holder knows them from here on.
    checkpoint_file: str | None = None
    preview_file: str | None = None
    # Asked before this attempt began (while an earlier one's worker was dying): stop at once.
    cancel_requested: bool = False


def claim_job(
    session: Session,
    job_id: uuid.UUID,
    *,
    worker: str,
    lease_seconds: float,
    max_attempts: int | None = None,
) -> Claim | None:
    """Take a queued job (or one whose lease expired) for ``worker``; None if it is not claimable.

    None covers a job that is running under a live lease, finished, or unknown:
    a redelivered message for it is a no-op. With ``max_attempts``, a job whose
    workers died that many times is not claimable either: ``fail_exhausted_job``
    ends it.
    """
    now = utcnow()
    conditions = [Job.id == job_id, _claimable(now)]
    if max_attempts is not None:
        conditions.append(_died_attempts() < max_attempts)
    claimed = session.execute(
        update(Job)
        .where(*conditions)
        .values(
            status=JobStatus.RUNNING,
            attempts=Job.attempts + 1,
            worker=worker,
            lease_owner=worker,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            started_at=func.coalesce(Job.started_at, now),
            updated_at=now,
        )
        .returning(
            Job.attempts,
            Job.params,
            Job.n_styles,
            Job.checkpoint_file,
            Job.preview_file,
            Job.cancel_requested,
        )
    ).one_or_none()
    if claimed is None:
        session.rollback()
        return None
    attempt, params, n_styles, checkpoint, preview, cancel = claimed
    session.add(JobEvent(job_id=job_id, kind=EventKind.CLAIMED, attempt=attempt, worker=worker))
    session.commit()
    return Claim(job_id, worker, attempt, dict(params), n_styles, checkpoint, preview, bool(cancel))


def _claimable(now: datetime) -> ColumnElement[bool]:
    # Queued, or running under a lease that ran out (its worker died or was cut off).
    return or_(
        Job.status == JobStatus.QUEUED,
        and_(Job.status == JobStatus.RUNNING, Job.lease_expires_at < now),
    )


def _died_attempts() -> ColumnElement[int]:
    """Attempts that ended without handing the job back or finishing it: their worker died.

    Every claim counts one attempt; one that handed the job back on a shutdown
    has a ``released`` event. A finished attempt ends the job, so on a claimable
    row (queued, or running under an expired lease) every other attempt died,
    the current one included when its lease expired. An admin's retry (a
    ``retried`` event, with the attempt count it found) starts the count afresh.
    """
    retry = aliased(JobEvent)
    retried_at = (
        select(func.coalesce(func.max(retry.attempt), 0))
        .where(retry.job_id == Job.id, retry.kind == EventKind.RETRIED.value)
        .scalar_subquery()
    )
    retried_since = (
        select(retry.id)
        .where(
            retry.job_id == JobEvent.job_id,
            retry.kind == EventKind.RETRIED.value,
            retry.attempt >= JobEvent.attempt,
        )
        .exists()
    )
    released = (
        select(func.count(JobEvent.id))
        .where(
            JobEvent.job_id == Job.id,
            JobEvent.kind == EventKind.RELEASED.value,
            ~retried_since,  # released before the last retry: counted in retried_at
        )
        .scalar_subquery()
    )
    return Job.attempts - retried_at - released


@dataclass(frozen=True)
class Exhausted:
    """A job failed with ``too_many_attempts``: its workers died ``died`` times."""

    job_id: uuid.UUID
    attempts: int
    died: int
    last_worker: str | None
    message: str


TOO_MANY_ATTEMPTS = "too_many_attempts"


def fail_exhausted_job(
    session: Session, job_id: uuid.UUID, *, max_attempts: int
) -> Exhausted | None:
    """Fail a claimable job whose workers died ``max_attempts`` times, instead of retrying it.

    None if the job is not claimable or has attempts left. The UPDATE is
    conditional on the status and attempt number read, so a job that a worker
    claims (or hands back) meanwhile is left alone. The caller removes the
    job's checkpoint, as for any failure.
    """
    now = utcnow()
    # One statement: the row and its released count from the same snapshot.
    row = session.execute(
        select(Job.status, Job.attempts, Job.worker, _died_attempts()).where(
            Job.id == job_id, _claimable(now)
        )
    ).one_or_none()
    if row is None or row[3] < max_attempts:
        session.rollback()
        return None
    status, attempts, last_worker, died = row
    message = (
        f"gave up after {died} attempt{'s' if died != 1 else ''} whose worker died "
        f"without finishing (the last on {last_worker or 'an unknown worker'}); "
        f"STYLEQUEUE_MAX_ATTEMPTS is {max_attempts}"
    )
    failed = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == status, Job.attempts == attempts, _claimable(now))
        .values(
            status=JobStatus.FAILED,
            error_code=TOO_MANY_ATTEMPTS,
            error_message=message,
            eta_seconds=None,
            lease_owner=None,
            lease_expires_at=None,
            checkpoint_file=None,
            finished_at=now,
            updated_at=now,
        )
    )
    if not _rowcount(failed):
        session.rollback()
        return None
    data = {
        "error_code": TOO_MANY_ATTEMPTS,
        "error_message": message,
        "died": died,
        "last_worker": last_worker,
    }
    session.add(JobEvent(job_id=job_id, kind=EventKind.FAILED, attempt=attempts, data=data))
    session.commit()
    return Exhausted(job_id, attempts, died, last_worker, message)


def _held_by(claim: Claim) -> ColumnElement[bool]:
    return and_(
        Job.id == claim.job_id,
        Job.status == JobStatus.RUNNING,
        Job.lease_owner == claim.worker,
        Job.attempts == claim.attempt,
    )


def heartbeat(
    session: Session,
    claim: Claim,
    *,
    iteration: int | None,
    iterations: int | None,
    eta_seconds: float | None,
    lease_seconds: float,
) -> bool:
    """Write progress and renew the lease in one statement; returns whether cancel was requested.

    ``iteration=None``: no progress to write yet (inputs still loading, the first
    iteration still running), only the lease renewed. Raises LeaseLostError if
    the worker no longer holds the job: it must stop.
    """
    now = utcnow()
    values: dict[str, Any] = {
        "lease_expires_at": now + timedelta(seconds=lease_seconds),
        "updated_at": now,
    }
    if iteration is not None and iterations is not None:
        values |= {
            "iteration": iteration,
            "iterations": iterations,
            "percent": progress_percent(iteration, iterations),
            "eta_seconds": eta_seconds,
        }
    row = session.execute(
        update(Job).where(_held_by(claim)).values(**values).returning(Job.cancel_requested)
    ).one_or_none()
    session.commit()
    if row is None:
        raise LeaseLostError(f"{claim.worker} lost its lease on job {claim.job_id}")
    return bool(row[0])


def progress_percent(iteration: int, iterations: int) -> float:
    """Iterations done as a percentage, 0..100, rounded to 0.01."""
    if iterations <= 0:
        return 0.0
    return round(100.0 * min(max(iteration, 0), iterations) / iterations, 2)


def record_checkpoint(session: Session, claim: Claim, *, iteration: int, name: str) -> None:
    """The checkpoint ``name``, of the run after ``iteration``, is in storage: commit it.

    The row names it (the one a later attempt resumes from) and a ``checkpoint``
    event records it, in one transaction, only while ``claim`` holds the lease;
    LeaseLostError otherwise (and nothing changes).
    """
    _commit_file(session, claim, {"checkpoint_file": name})
    _record(session, claim, EventKind.CHECKPOINT, iteration)


def record_preview(session: Session, claim: Claim, *, name: str) -> None:
    """The preview ``name`` is in storage: the one served, while ``claim`` holds the lease.

    LeaseLostError otherwise (and nothing changes).
    """
    _commit_file(session, claim, {"preview_file": name})
    session.commit()


def _commit_file(session: Session, claim: Claim, values: dict[str, Any]) -> None:
    # Left uncommitted: the caller adds what goes with it (an event) and commits.
    named = session.execute(update(Job).where(_held_by(claim)).values(**values))
    if not _rowcount(named):
        session.rollback()
        raise LeaseLostError(f"{claim.worker} lost its lease on job {claim.job_id}")


def record_resumed(session: Session, claim: Claim, *, iteration: int) -> None:
    """This attempt continues from a checkpoint taken after ``iteration``."""
    _record(session, claim, EventKind.RESUMED, iteration)


def _record(
    session: Session,
    claim: Claim,
    kind: EventKind,
    iteration: int,
    extra: dict[str, Any] | None = None,
) -> None:
    session.add(
        JobEvent(
            job_id=claim.job_id,
            kind=kind,
            attempt=claim.attempt,
            worker=claim.worker,
            data={"iteration": iteration, **(extra or {})},
        )
    )
    session.commit()


def finish_job(session: Session, claim: Claim, *, result_file: str | None = None) -> None:
    """running → succeeded, naming ``result_file`` (already stored) as the job's result.

    LeaseLostError if not held: then the row is unchanged and the file is no result.
    Without ``result_file`` the result is the fixed-name one jobs used to have.
    """
    now = utcnow()
    values: dict[str, Any] = {"eta_seconds": 0.0}
    if result_file is not None:
        values["result_file"] = result_file
    _end(session, claim, JobStatus.SUCCEEDED, EventKind.SUCCEEDED, values, now)


def fail_job(
    session: Session,
    claim: Claim,
    *,
    code: str,
    message: str,
    progress: tuple[int, int] | None = None,
) -> None:
    """running → failed, with an error code and message the client can read.

    ``progress``: (iteration, iterations) where the engine stopped, written with it.
    """
    values: dict[str, Any] = {"error_code": code, "error_message": message}
    if progress is not None:
        iteration, iterations = progress
        values |= {"iteration": iteration, "percent": progress_percent(iteration, iterations)}
    _end(session, claim, JobStatus.FAILED, EventKind.FAILED, values, utcnow())


def cancel_running_job(session: Session, claim: Claim, *, iteration: int) -> None:
    """running → canceled, once the worker has stopped the engine for a cancel request."""
    _end(
        session,
        claim,
        JobStatus.CANCELED,
        EventKind.CANCELED,
        {"iteration": iteration},
        utcnow(),
    )


def release_job(
    session: Session,
    claim: Claim,
    *,
    iteration: int,
    checkpoint_file: str | None = None,
    reason: str | None = None,
) -> None:
    """running → queued: a worker shutting down hands the job back after checkpointing it.

    Only while holding the lease (LeaseLostError otherwise). The attempt count
    stays as it is, so the next claim is a new attempt that resumes from the
    checkpoint; the ``released`` event records where this attempt stopped. With
    ``checkpoint_file`` (stored already), the row names it in the same statement.
    ``reason``: why, when it is not a shutdown (an error code, in the event's data).
    """
    now = utcnow()
    committed = {"checkpoint_file": checkpoint_file} if checkpoint_file is not None else {}
    released = session.execute(
        update(Job)
        .where(_held_by(claim))
        .values(
            status=JobStatus.QUEUED,
            lease_owner=None,
            lease_expires_at=None,
            eta_seconds=None,
            updated_at=now,
            **committed,
        )
    )
    if not _rowcount(released):
        session.rollback()
        raise LeaseLostError(f"{claim.worker} lost its lease on job {claim.job_id}")
    extra = {"reason": reason} if reason else {}
    _record(session, claim, EventKind.RELEASED, iteration, extra)


def expire_lease_of_dead_worker(session: Session, job_id: uuid.UUID, *, worker: str) -> int | None:
    """The lease of ``worker``, a process known to be dead, ends now; returns its attempt.

    For the worker's main process once it has reaped a pool process that died
    mid-job (SIGKILL, the OOM killer): the job need not wait for the lease to run
    out, the next claim retries it at once. None if ``worker`` no longer holds
    the job (another worker claimed it after the lease expired, or it finished).
    A ``worker_lost`` event records it; the attempt counts as one that died.
    """
    now = utcnow()
    ended = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.status == JobStatus.RUNNING,
            Job.lease_owner == worker,
        )
        # updated_at at the expiry, like a lease that ran out: the reconciler re-sends it.
        .values(lease_expires_at=now, updated_at=now, eta_seconds=None)
        .returning(Job.attempts)
    ).one_or_none()
    if ended is None:
        session.rollback()
        return None
    attempt = int(ended[0])
    session.add(JobEvent(job_id=job_id, kind=EventKind.WORKER_LOST, attempt=attempt, worker=worker))
    session.commit()
    return attempt


def _end(
    session: Session,
    claim: Claim,
    status: JobStatus,
    kind: EventKind,
    values: dict[str, Any],
    now: datetime,
) -> None:
    if status is JobStatus.SUCCEEDED:
        values = values | {"iteration": Job.iterations, "percent": 100.0}
    ended = session.execute(
        update(Job)
        .where(_held_by(claim))
        .values(
            status=status,
            finished_at=now,
            updated_at=now,
            lease_owner=None,
            lease_expires_at=None,
            checkpoint_file=None,  # a finished job is never resumed
            **values,
        )
    )
    if not _rowcount(ended):
        session.rollback()
        raise LeaseLostError(f"{claim.worker} lost its lease on job {claim.job_id}")
    data = {k: v for k, v in values.items() if isinstance(v, str | int | float)}
    session.add(
        JobEvent(
            job_id=claim.job_id, kind=kind, attempt=claim.attempt, worker=claim.worker, data=data
        )
    )
    session.commit()


# ---------------------------------------------------------------- reconciler


def requeue_stale_jobs(
    session: Session, *, older_than_seconds: float, enqueue: Enqueue, limit: int | None = 1000
) -> list[uuid.UUID]:
    """Enqueue again the queued jobs that nothing has touched for ``older_than_seconds``
    (their message may be lost), and the running jobs whose lease expired.

    A running job's lease expires only when its worker stopped renewing it (it
    died, or lost the database): that job is re-sent at the first run after the
    expiry, not ``older_than_seconds`` later. A job still in the broker gets a
    second message: harmless, the second claim is a no-op. ``updated_at`` is
    touched so each job is re-sent at most once per period (a re-sent running
    job has ``updated_at`` past its lease's expiry; a heartbeat or claim always
    leaves it before). ``limit=None``: every such job (after Redis lost its keys).
    """
    now = utcnow()
    cutoff = now - timedelta(seconds=older_than_seconds)
    stale_condition = or_(
        and_(Job.status == JobStatus.QUEUED, Job.updated_at < cutoff),
        and_(
            Job.status == JobStatus.RUNNING,
            Job.lease_expires_at < now,
            or_(Job.updated_at <= Job.lease_expires_at, Job.updated_at < cutoff),
        ),
    )
    stale = list(
        session.scalars(select(Job.id).where(stale_condition).order_by(Job.created_at).limit(limit))
    )
    requeued = []
    for job_id in stale:
        touched = session.execute(
            update(Job).where(Job.id == job_id, stale_condition).values(updated_at=now)
        )
        if not _rowcount(touched):
            continue
        session.add(JobEvent(job_id=job_id, kind=EventKind.REQUEUED))
        session.commit()
        enqueue(job_id)
        requeued.append(job_id)
    return requeued


def fail_exhausted_jobs(
    session: Session, storage: LocalStorage, *, max_attempts: int, limit: int = 1000
) -> list[Exhausted]:
    """The reconciler's side of the attempts cap: fail every claimable job whose
    workers died ``max_attempts`` times (``too_many_attempts``) and remove its
    checkpoint, rather than re-enqueue it. A worker's claim refuses such a job too."""
    now = utcnow()
    candidates = list(
        session.scalars(
            select(Job.id)
            .where(
                Job.attempts >= max_attempts,  # cheap: a job never died more than it ran
                _claimable(now),
                _died_attempts() >= max_attempts,
            )
            .order_by(Job.created_at)
            .limit(limit)
        )
    )
    session.rollback()
    failed = []
    for job_id in candidates:
        exhausted = fail_exhausted_job(session, job_id, max_attempts=max_attempts)
        if exhausted is not None:
            storage.delete_checkpoints(job_id)
            failed.append(exhausted)
    return failed


FINISHED_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)


def delete_expired_files(
    session: Session, storage: LocalStorage, *, older_than_seconds: float, limit: int = 1000
) -> list[uuid.UUID]:
    """Remove the files of jobs that finished more than ``older_than_seconds`` ago.

    The row and its events stay (the job's history); a ``files_deleted`` event
    marks the job so that it is not looked at again. Files go first and the
    event after: a crash in between only means the next run deletes nothing again.
    """
    cutoff = utcnow() - timedelta(seconds=older_than_seconds)
    already_deleted = (
        select(JobEvent.id)
        .where(JobEvent.job_id == Job.id, JobEvent.kind == EventKind.FILES_DELETED)
        .exists()
    )
    expired = list(
        session.scalars(
            select(Job.id)
            .where(
                Job.status.in_(FINISHED_STATUSES),
                Job.finished_at < cutoff,
                ~already_deleted,
            )
            .order_by(Job.finished_at)
            .limit(limit)
        )
    )
    session.rollback()  # no transaction held open while deleting files
    for job_id in expired:
        storage.delete_job_files(job_id)
        session.add(JobEvent(job_id=job_id, kind=EventKind.FILES_DELETED))
        session.commit()
    return expired


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0))
