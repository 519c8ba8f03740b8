"""A job's row: create it, poll it, read it by id or key, and change it through the one
guarded update (``guarded_update``) that every transition uses.

The rules (``shared.submissions``, ``shared.jobs``, ``shared.leases``) call these
functions and never see a driver. On PostgreSQL the submit's two INSERTs and the
poll's SELECT run prepared, straight on the driver, on a connection of this
thread's own (``shared.db.ThreadConnections``): through SQLAlchemy a poll cost
about five times its ~40 µs query. Elsewhere (SQLite) they go through SQLAlchemy
Core. The statements and their column lists are built once, from the tables; the
values go through the columns' own SQLAlchemy type processing on both paths.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, NamedTuple, Protocol, cast

from sqlalchemy import ColumnElement, Dialect, Table, bindparam, insert, select, update
from sqlalchemy.orm import Session

from shared.db import Database
from shared.errors import LeaseLostError, NotFoundError
from shared.follow_progress import copy_to_followers
from shared.job_changes import job_changed
from shared.job_view import JOB_VIEW_COLUMNS, JOB_VIEW_FIELDS, JobView
from shared.models import EventKind, Job, JobEvent, JobStatus, Transition
from shared.webhook_outbox import event_of, record_change, submit_rows
from shared.webhooks import WebhookRequest

_JOBS = cast(Table, Job.__table__)
_EVENTS = cast(Table, JobEvent.__table__)


def parse_job_id(raw: str) -> uuid.UUID:
    """A job id from a URL; a malformed one is simply a job that does not exist."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise NotFoundError(f"no job {raw!r}", code="job_not_found") from None


def _not_found(job_id: uuid.UUID) -> NotFoundError:
    # Another client's job is indistinguishable from a missing one.
    return NotFoundError(f"no job {job_id}", code="job_not_found")


# ---------------------------------------------------------------- read


def get_job(session: Session, job_id: uuid.UUID, *, client_id: int | None) -> Job:
    """The job's row, in ``session``, if it exists and belongs to ``client_id`` (None: any
    client, for admins): for a rule that reads a job before it changes or serves it."""
    job = session.get(Job, job_id)
    if job is None or (client_id is not None and job.client_id != client_id):
        raise _not_found(job_id)
    return job


def files_deleted(session: Session, job_id: uuid.UUID) -> bool:
    """Whether the job's files were deleted (a ``files_deleted`` event: retention or an admin)."""
    found = session.scalar(
        select(JobEvent.id)
        .where(JobEvent.job_id == job_id, JobEvent.kind == EventKind.FILES_DELETED)
        .limit(1)
    )
    return found is not None


def find_by_idempotency_key(session: Session, client_id: int, key: str) -> Job | None:
    """The job this client created with this Idempotency-Key, if any."""
    return session.scalars(
        select(Job).where(Job.client_id == client_id, Job.idempotency_key == key)
    ).one_or_none()


_POLL_SQL = f"SELECT {', '.join(JOB_VIEW_FIELDS)} FROM jobs WHERE id = %s"
_READ_VIEW = select(*JOB_VIEW_COLUMNS).where(_JOBS.c.id == bindparam("job_id"))


def poll_job(db: Database, job_id: uuid.UUID, *, client_id: int | None) -> JobView:
    """The job as its client sees it, on the cheapest path there is: every poll comes here.

    Read outside any transaction (the row as committed). On the driver path the
    timestamps are in the database session's zone (aware; the JSON shows UTC).
    """
    connections = db.thread_connections
    if connections is None:
        with db.read_engine.connect() as connection:
            found = connection.execute(_READ_VIEW, {"job_id": job_id}).one_or_none()
        if found is None or (client_id is not None and found.client_id != client_id):
            raise _not_found(job_id)
        return JobView(*found)
    row = connections.fetch_one(_POLL_SQL, (job_id,))
    if row is None or (client_id is not None and row[1] != client_id):
        raise _not_found(job_id)
    # The driver hands the status back as text.
    return JobView(row[0], row[1], JobStatus(row[2]), *row[3:])


# What of a job its live events are made from (``api.sse_events.job_state``), in that order.
JOB_STATE_COLUMNS = ("status", "attempts", "iteration", "iterations", "preview_file")


def job_states(db: Database, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, tuple[Any, ...]]:
    """The ``JOB_STATE_COLUMNS`` of the jobs of ``job_ids`` that exist, any client's, in one
    query: for a process that watches many jobs at once (the API's event streams) to see
    cheaply which of them changed."""
    if not job_ids:
        return {}
    columns = [_JOBS.c[name] for name in JOB_STATE_COLUMNS]
    with db.read_engine.connect() as connection:
        rows = connection.execute(
            select(_JOBS.c.id, *columns).where(_JOBS.c.id.in_(list(job_ids)))
        ).all()
    return {row[0]: tuple(row[1:]) for row in rows}


# ---------------------------------------------------------------- change


class Lease(Protocol):
    """A worker's hold on a job (``shared.jobs.Claim``): this owner, this attempt number."""

    @property
    def job_id(self) -> uuid.UUID: ...
    @property
    def worker(self) -> str: ...
    @property
    def attempt(self) -> int: ...


def guarded_update(
    session: Session,
    job_id: uuid.UUID,
    where: Sequence[ColumnElement[bool]],
    values: dict[str, Any],
    *,
    transition: Transition | None = None,
    event: EventKind | None = None,
    data: dict[str, Any] | None = None,
    attempt: int | None = 0,
    worker: str | None = None,
    lease: Lease | None = None,
    returning: Sequence[Any] = (),
    webhook: str | None = None,
    also: Callable[[Session], None] | None = None,
) -> tuple[Any, ...] | None:
    """Change job ``job_id`` with one conditional UPDATE; if it matched, add its event and commit.

    ``transition`` (a row of ``TRANSITIONS``) adds its sources to the condition,
    its target to the values and its event kind (else ``event``, if any).
    ``lease``: the claim of the worker that writes; the condition holds only
    while that worker holds the job, the event carries its attempt and worker,
    and a miss raises ``LeaseLostError``; otherwise a miss returns None. A miss
    is rolled back and changes nothing. The event's attempt is ``attempt``
    (None: the row's attempt number after the update). Returns the row's
    ``attempts`` followed by the ``returning`` columns. The change's webhook delivery
    (``webhook``, else the transition's event: ``shared.webhook_outbox``) is committed with it;
    so is what ``also`` writes (called after a matching UPDATE).
    """
    conditions = [Job.id == job_id, *where]
    if transition is not None:
        sources = transition.sources
        conditions.append(
            Job.status == sources[0] if len(sources) == 1 else Job.status.in_(sources)
        )
        values = {**values, "status": transition.target}
        event = transition.event
    if lease is not None:
        conditions += [Job.lease_owner == lease.worker, Job.attempts == lease.attempt]
        if transition is None:  # a lease is held only while the job runs
            conditions.append(Job.status == JobStatus.RUNNING)
        attempt, worker = lease.attempt, lease.worker
    row = session.execute(
        update(Job).where(*conditions).values(**values).returning(Job.attempts, *returning)
    ).one_or_none()
    if row is None:
        session.rollback()
        if lease is not None:
            raise LeaseLostError(f"{lease.worker} lost its lease on job {lease.job_id}")
        return None
    if event is not None:
        number = int(row[0]) if attempt is None else attempt
        session.add(
            JobEvent(job_id=job_id, kind=event, attempt=number, worker=worker, data=data or {})
        )
    hook_event = webhook or event_of(transition)
    if hook_event is not None:
        record_change(session, job_id, hook_event)
    if also is not None:
        also(session)
    # A change of its status or progress is its followers' too (shared.follow_progress),
    # and so are its start and progress webhooks.
    followers = copy_to_followers(session, job_id, values)
    if hook_event is not None:
        for follower in followers:
            record_change(session, follower, hook_event)
    session.commit()
    for changed in (job_id, *followers):
        job_changed(changed)  # a hint for the API's event streams; never raises
    return tuple(row)


# ---------------------------------------------------------------- create

# A new row's columns that its view does not hold: no lease, no cancel request, no
# committed file yet. The others are the view's and insert_job's arguments.
_NOTHING_YET: dict[str, Any] = {
    "lease_owner": None,
    "lease_expires_at": None,
    "cancel_requested": False,
    "result_file": None,
    "checkpoint_file": None,
    "cached_from": None,
}
_GIVEN = (
    "idempotency_key",
    "request_digest",
    "updated_at",
    "cache_key",
    "queue_name",
    "batch_shape",
)
# Every column, so that the row is known without reading it back.
_JOB_COLUMNS = tuple(column.name for column in _JOBS.columns)
_EVENT_COLUMNS = tuple(column.name for column in _EVENTS.columns if not column.primary_key)
if {*JOB_VIEW_FIELDS, *_NOTHING_YET, *_GIVEN} != set(_JOB_COLUMNS):
    raise RuntimeError(f"insert_job does not write exactly the columns of jobs: {_JOB_COLUMNS}")

# Built once: constructing a statement would cost as much as running it.
_INSERT_JOB = insert(_JOBS)
_INSERT_EVENT = insert(_EVENTS)
_INSERT_JOB_SQL = (
    f"INSERT INTO jobs ({', '.join(_JOB_COLUMNS)}) VALUES ({', '.join(['%s'] * len(_JOB_COLUMNS))})"
)
_INSERT_EVENT_SQL = (
    f"INSERT INTO job_events ({', '.join(_EVENT_COLUMNS)}) "
    f"VALUES ({', '.join(['%s'] * len(_EVENT_COLUMNS))})"
)


def insert_job(
    session: Session,
    job: JobView,
    *,
    idempotency_key: str | None,
    request_digest: str | None,
    db: Database | None = None,
    cache_key: str | None = None,
    queue_name: str = "",
    batch_shape: str | None = None,
    copied: CopiedResult | None = None,
    webhook: WebhookRequest | None = None,
) -> None:
    """Commit a new job's row (``job`` and the arguments) and its ``created`` event, together.

    ``copied``: the job is born finished, with a result copied from another job
    (``shared.result_cache``): the row names that file and that job, and its
    ``succeeded`` event, with ``copied.event_data``, is committed with it. A job that
    ``follows`` another has a ``following`` event, its leader a ``followed_by`` one.

    With ``db`` (the process's ``Database``) on its fastest path; else, and on
    SQLite, through ``session`` (rolled back by the caller on an error). ``webhook``: the
    job's webhook row (and a born-finished job's ``completed`` delivery) go in with it. A key
    used already is SQLAlchemy's ``IntegrityError``; a connection lost during the
    COMMIT, ``CommitOutcomeUnknownError`` (the row may be in).
    """
    row = {name: getattr(job, name) for name in JOB_VIEW_FIELDS} | _NOTHING_YET
    row |= {
        "idempotency_key": idempotency_key,
        "request_digest": request_digest,
        "updated_at": job.created_at,
        "cache_key": cache_key,
        "queue_name": queue_name,  # the broker key space of its message (shared.fair_share)
        "batch_shape": batch_shape,  # the jobs it may run with (worker.batch_runner)
    }
    created = _event(job.id, EventKind.CREATED, job.created_at, {})
    events = [created]
    if copied is not None:
        row |= {"result_file": copied.result_file, "cached_from": copied.source}
        events.append(_event(job.id, EventKind.SUCCEEDED, job.finished_at, copied.event_data))
    if job.follows is not None:  # it shares a run (shared.follows): on both timelines
        events.append(
            _event(job.id, EventKind.FOLLOWING, job.created_at, {"leader": str(job.follows)})
        )
        events.append(
            _event(job.follows, EventKind.FOLLOWED_BY, job.created_at, {"follower": str(job.id)})
        )
    hooks = (
        []
        if webhook is None
        else submit_rows(
            job.id, webhook, finished=copied is not None, now=job.finished_at or job.created_at
        )
    )
    connections = db.thread_connections if db is not None else None
    if db is None or connections is None:
        # Two Core INSERTs: the ORM's unit of work cost as much again as the statements.
        connection = session.connection()
        connection.execute(_INSERT_JOB, row)
        for event in events:
            connection.execute(_INSERT_EVENT, event)
        for table, values in hooks:
            connection.execute(table.insert(), values)
        session.commit()
        return
    dialect = db.engine.dialect
    connections.write(
        [
            (_INSERT_JOB_SQL, _bound(_JOBS, _JOB_COLUMNS, dialect, row)),
            *[
                (_INSERT_EVENT_SQL, _bound(_EVENTS, _EVENT_COLUMNS, dialect, event))
                for event in events
            ],
            *[
                (
                    f"INSERT INTO {table.name} ({', '.join(values)}) "
                    f"VALUES ({', '.join(['%s'] * len(values))})",
                    _bound(table, tuple(values), dialect, values),
                )
                for table, values in hooks
            ],
        ]
    )


class CopiedResult(NamedTuple):
    """What a job born finished takes from the job whose result it copied."""

    source: uuid.UUID  # the job the result came from (the row's ``cached_from``)
    result_file: str  # the copy's name among the new job's files
    event_data: dict[str, Any]  # the ``succeeded`` event's data


def _event(
    job_id: uuid.UUID, kind: EventKind, at: datetime | None, data: dict[str, Any]
) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "kind": kind.value,
        "attempt": 0,
        "worker": None,
        "at": at,
        "data": data,
    }


Processor = Callable[[Any], Any] | None


def _bound(
    table: Table, columns: tuple[str, ...], dialect: Dialect, values: dict[str, Any]
) -> list[Any]:
    # What SQLAlchemy would send for these values (enums as text, JSON wrapped, UTC
    # timestamps), from the columns' own bind processors.
    processors = _processors(table, columns, dialect)
    return [
        values[name] if process is None else process(values[name])
        for name, process in zip(columns, processors, strict=True)
    ]


@functools.cache
def _processors(table: Table, columns: tuple[str, ...], dialect: Dialect) -> tuple[Processor, ...]:
    return tuple(
        table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in columns
    )
