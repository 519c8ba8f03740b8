"""What operators see of every client's jobs, and what they do to them.

Reads: ``list_jobs`` (filtered, keyset-paginated, newest first) and
``job_detail`` (a job with its event timeline). Actions: ``cancel_job``,
``retry_job`` (a failed or canceled job queued again), ``delete_job_files``.
Every function takes a SQLAlchemy session and returns frozen dataclasses; the
admin API and page turn them into JSON or HTML. The statistics are in
``shared.stats``, the other operator reads (workers, clients, live progress) in
``shared.admin_reads``, the parsing of the front ends' query strings in
``shared.admin_filters``.
"""

from __future__ import annotations

import functools
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    bindparam,
    select,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.orm import Session

from shared import jobs
from shared.errors import ConflictError
from shared.jobs import Enqueue, EventKind, get_job
from shared.models import ApiClient, Job, JobEvent, JobStatus, utcnow
from shared.pagination import Cursor
from shared.stats import forget_cached_counts
from shared.storage import LocalStorage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobFilters:
    """Which jobs ``list_jobs`` returns; every filter given must hold (AND).

    ``statuses``: any of these (empty: every status). ``worker``: the worker
    that ran (or last ran) the job, exactly. ``created_from`` is inclusive,
    ``created_to`` exclusive; both timezone-aware.
    """

    statuses: tuple[JobStatus, ...] = ()
    client_id: int | None = None
    worker: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None


@dataclass(frozen=True)
class AdminJob:
    """One job as a table row: the client JSON's fields (the ``JobRecord`` protocol,
    so ``api.job_json.job_dict`` takes it) plus its client's id and name."""

    id: uuid.UUID
    client_id: int
    client_name: str
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


@dataclass(frozen=True)
class AdminJobPage:
    items: list[AdminJob]
    next_cursor: str | None  # pass back as ``Cursor.decode(next_cursor)``; None: last page


@dataclass(frozen=True)
class TimelineEvent:
    """One ``job_events`` row: created, claimed (per attempt), resumed, checkpoint,
    cancel_requested, released, requeued, retried, succeeded/failed/canceled, files_deleted."""

    at: datetime
    kind: str
    attempt: int
    worker: str | None
    data: dict[str, Any]


@dataclass(frozen=True)
class AdminJobDetail:
    """A job, its client, its whole history and its durations."""

    job: AdminJob
    n_styles: int
    cancel_requested: bool
    lease_owner: str | None
    lease_expires_at: datetime | None
    updated_at: datetime
    queue_seconds: float  # created → first start (→ now while still queued)
    run_seconds: float | None  # first start → finish (→ now while running); None if never started
    files_deleted: bool  # a files_deleted event exists (retention or an admin)
    events: list[TimelineEvent]  # oldest first


def list_jobs(
    session: Session, filters: JobFilters, *, limit: int, cursor: Cursor | None
) -> AdminJobPage:
    """Every client's jobs matching ``filters``, newest first (created_at, id), one keyset page.

    Each filter shape walks an index in order ((created_at, id), (status, …),
    (client_id, …), (worker, …)) and stops after ``limit + 1`` rows, however deep
    the cursor; several statuses are one ordered index walk each, merged.
    """
    statuses = tuple(dict.fromkeys(filters.statuses))
    values: dict[str, Any] = {
        "client_id": filters.client_id,
        "worker": filters.worker,
        "created_from": filters.created_from,
        "created_to": filters.created_to,
        "wanted": limit + 1,
    }
    values |= {f"status_{i}": status for i, status in enumerate(statuses)}
    if cursor is not None:
        values |= {"cursor_at": cursor.created_at, "cursor_id": cursor.job_id}
    statement = _list_statement(
        len(statuses),
        client=filters.client_id is not None,
        worker=filters.worker is not None,
        created_from=filters.created_from is not None,
        created_to=filters.created_to is not None,
        after=cursor is not None,
    )
    rows = session.execute(statement, {k: v for k, v in values.items() if v is not None}).all()
    items = [_admin_job(row._mapping) for row in rows]
    if len(items) <= limit:
        return AdminJobPage(items, None)
    last = items[limit - 1]
    return AdminJobPage(items[:limit], Cursor(last.created_at, last.id).encode())


_JOB_COLUMNS = (
    Job.id,
    Job.client_id,
    Job.status,
    Job.params,
    Job.iteration,
    Job.iterations,
    Job.percent,
    Job.eta_seconds,
    Job.attempts,
    Job.worker,
    Job.error_code,
    Job.error_message,
    Job.created_at,
    Job.started_at,
    Job.finished_at,
)


@functools.lru_cache(maxsize=512)
def _list_statement(
    n_statuses: int,
    *,
    client: bool,
    worker: bool,
    created_from: bool,
    created_to: bool,
    after: bool,
) -> Select[Any]:
    """The list query for one filter shape, values as bound parameters: built once
    per shape (building it cost as much as running it)."""
    conditions: list[ColumnElement[bool]] = []
    if client:
        conditions.append(Job.client_id == bindparam("client_id"))
    if worker:
        conditions.append(Job.worker == bindparam("worker", type_=Job.worker.type))
    if created_from:
        conditions.append(Job.created_at >= bindparam("created_from", type_=Job.created_at.type))
    if created_to:
        conditions.append(Job.created_at < bindparam("created_to", type_=Job.created_at.type))
    if after:
        # A row comparison: PostgreSQL turns it into one index range, whatever the depth.
        conditions.append(
            tuple_(Job.created_at, Job.id)
            < tuple_(
                bindparam("cursor_at", type_=Job.created_at.type),
                bindparam("cursor_id", type_=Job.id.type),
            )
        )
    wanted = bindparam("wanted", type_=Integer)

    def status_is(i: int) -> ColumnElement[bool]:
        return Job.status == bindparam(f"status_{i}", type_=Job.status.type)

    if n_statuses <= 1:
        where = [*conditions, status_is(0)] if n_statuses else conditions
        page = _ordered(select(*_JOB_COLUMNS).where(*where), wanted).subquery()
    else:
        # Several statuses: one ordered index walk each, merged.
        parts = [
            _ordered(select(*_JOB_COLUMNS).where(*conditions, status_is(i)), wanted).subquery()
            for i in range(n_statuses)
        ]
        merged = union_all(*(select(part) for part in parts)).subquery()
        page = _ordered(select(merged), wanted, merged.c).subquery()
    return _ordered(
        select(page, ApiClient.name.label("client_name")).join(
            ApiClient, ApiClient.id == page.c.client_id
        ),
        wanted,
        page.c,
    )


def _ordered(query: Select[Any], limit: Any, columns: Any = None) -> Select[Any]:
    created_at, job_id = (
        (Job.created_at, Job.id) if columns is None else (columns.created_at, columns.id)
    )
    return query.order_by(created_at.desc(), job_id.desc()).limit(limit)


def _admin_job(row: Any) -> AdminJob:
    return AdminJob(
        id=row["id"],
        client_id=row["client_id"],
        client_name=row["client_name"],
        status=JobStatus(row["status"]),
        params=dict(row["params"]),
        iteration=row["iteration"],
        iterations=row["iterations"],
        percent=row["percent"],
        eta_seconds=row["eta_seconds"],
        attempts=row["attempts"],
        worker=row["worker"],
        error_code=row["error_code"],
        error_message=row["error_message"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
    )


def job_detail(
    session: Session, job_id: uuid.UUID, *, now: datetime | None = None
) -> AdminJobDetail:
    """A job with its event timeline; NotFoundError (job_not_found) when unknown."""
    now = now or utcnow()
    job = get_job(session, job_id, client_id=None)
    client_name = session.scalar(select(ApiClient.name).where(ApiClient.id == job.client_id))
    events = [
        TimelineEvent(e.at, e.kind, e.attempt, e.worker, dict(e.data or {}))
        for e in session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.at, JobEvent.id)
        )
    ]
    row = {c.key: getattr(job, c.key) for c in _JOB_COLUMNS} | {"client_name": client_name or ""}
    queue_end = job.started_at or job.finished_at or now
    return AdminJobDetail(
        job=_admin_job(row),
        n_styles=job.n_styles,
        cancel_requested=job.cancel_requested,
        lease_owner=job.lease_owner,
        lease_expires_at=job.lease_expires_at,
        updated_at=job.updated_at,
        queue_seconds=max(0.0, (queue_end - job.created_at).total_seconds()),
        run_seconds=(
            None
            if job.started_at is None
            else ((job.finished_at or now) - job.started_at).total_seconds()
        ),
        files_deleted=any(e.kind == EventKind.FILES_DELETED for e in events),
        events=events,
    )


# ---------------------------------------------------------------- actions


def cancel_job(session: Session, job_id: uuid.UUID) -> Job:
    """Cancel any client's queued or running job (a running one stops at its next
    heartbeat); a finished job is returned unchanged. NotFoundError when unknown."""
    return jobs.cancel_job(session, job_id, client_id=None)


RETRYABLE_STATUSES = (JobStatus.FAILED, JobStatus.CANCELED)


def retry_job(session: Session, job_id: uuid.UUID, enqueue: Enqueue) -> Job:
    """A failed or canceled job queued again: the error cleared, the next claim a new
    attempt, its history kept with a ``retried`` event; then enqueued.

    ConflictError ``job_not_retryable`` for any other status, or ``job_files_deleted``
    when its input files are gone. NotFoundError when unknown. ``started_at`` and
    ``finished_at`` are cleared: they describe the new run (the timeline keeps the old).
    """
    job = get_job(session, job_id, client_id=None)
    status = job.status
    if status not in RETRYABLE_STATUSES:
        raise ConflictError(
            f"job {job_id} is {status.value}; only a failed or canceled job can be retried",
            code="job_not_retryable",
            details={"status": status.value},
        )
    if _files_deleted(session, job_id):
        raise ConflictError(
            f"job {job_id}: its files were deleted, it cannot run again",
            code="job_files_deleted",
        )
    previous = {"status": status.value, "error_code": job.error_code}
    now = utcnow()
    retried = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == status)
        .values(
            status=JobStatus.QUEUED,
            error_code=None,
            error_message=None,
            cancel_requested=False,
            lease_owner=None,
            lease_expires_at=None,
            iteration=0,
            percent=0.0,
            eta_seconds=None,
            started_at=None,
            finished_at=None,
            updated_at=now,
        )
    )
    if not getattr(retried, "rowcount", 0):  # changed under us: say what it is now
        session.rollback()
        return retry_job(session, job_id, enqueue)
    session.add(
        JobEvent(
            job_id=job_id,
            kind=EventKind.RETRIED,
            attempt=job.attempts,
            data={k: v for k, v in previous.items() if v is not None},
        )
    )
    session.commit()
    forget_cached_counts()
    try:
        enqueue(job_id)
    except Exception as exc:  # the broker is down: the reconciler enqueues it later
        log.warning("job %s retried but not enqueued (%s); left for the reconciler", job_id, exc)
    session.refresh(job)
    return job


def delete_job_files(session: Session, storage: LocalStorage, job_id: uuid.UUID) -> Job:
    """Remove a job's files (inputs, preview, checkpoint, result) and record ``files_deleted``.

    Only for a finished job: a queued or running one is a ConflictError
    ``job_not_finished`` (cancel it first). Idempotent. NotFoundError when unknown.
    """
    job = get_job(session, job_id, client_id=None)
    if not job.status.is_finished:
        raise ConflictError(
            f"job {job_id} is {job.status.value}; cancel it first, files go only once it ended",
            code="job_not_finished",
            details={"status": job.status.value},
        )
    already = _files_deleted(session, job_id)
    session.rollback()  # no transaction open while deleting files
    storage.delete_job_files(job_id)
    if not already:
        session.add(JobEvent(job_id=job_id, kind=EventKind.FILES_DELETED, data={"by": "admin"}))
        session.commit()
    return get_job(session, job_id, client_id=None)


def _files_deleted(session: Session, job_id: uuid.UUID) -> bool:
    found = session.scalar(
        select(JobEvent.id)
        .where(JobEvent.job_id == job_id, JobEvent.kind == EventKind.FILES_DELETED)
        .limit(1)
    )
    return found is not None
