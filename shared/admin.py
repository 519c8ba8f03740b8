"""What operators see of every client's jobs, and what they do to them.

Reads: ``list_jobs`` (filtered, keyset-paginated, newest first) and
``job_detail`` (a job with its event timeline). Actions: ``cancel_job``,
``delete_job_files`` (a retry is ``shared.jobs.retry_job``, beside the other transitions).
Every function takes a SQLAlchemy session and returns frozen dataclasses; the
admin API and page turn them into JSON or HTML. The statistics are in
``shared.stats``, the other operator reads (workers, clients, live progress) in
``shared.admin_reads``, the parsing of the front ends' query strings in
``shared.admin_filters``.
"""

from __future__ import annotations

import functools
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
)
from sqlalchemy.orm import Session

from shared import jobs
from shared.errors import ConflictError
from shared.job_store import files_deleted, get_job
from shared.job_view import JOB_VIEW_COLUMNS, JOB_VIEW_FIELDS, JobView, job_timings
from shared.models import ApiClient, EventKind, Job, JobEvent, JobStatus, utcnow
from shared.pagination import Cursor
from shared.storage import Storage


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


@dataclass(frozen=True, slots=True)
class AdminJob(JobView):
    """One job as a table row: its read model (so ``api.job_json.job_dict`` takes it)
    and its client's name."""

    client_name: str


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


_JOB_COLUMNS = JOB_VIEW_COLUMNS


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
    # The status and params as the client's JSON expects them, whatever the query's shape.
    values = {name: row[name] for name in JOB_VIEW_FIELDS}
    values["status"], values["params"] = JobStatus(values["status"]), dict(values["params"])
    return AdminJob(**values, client_name=row["client_name"])


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
    timings = job_timings(job.created_at, job.started_at, job.finished_at, now)
    return AdminJobDetail(
        job=_admin_job(row),
        n_styles=job.n_styles,
        cancel_requested=job.cancel_requested,
        lease_owner=job.lease_owner,
        lease_expires_at=job.lease_expires_at,
        updated_at=job.updated_at,
        queue_seconds=timings.queue_seconds,
        run_seconds=timings.run_seconds,
        files_deleted=any(e.kind == EventKind.FILES_DELETED for e in events),
        events=events,
    )


# ---------------------------------------------------------------- actions


def cancel_job(session: Session, job_id: uuid.UUID) -> Job:
    """Cancel any client's queued or running job (a running one stops at its next
    heartbeat); a finished job is returned unchanged. NotFoundError when unknown."""
    return jobs.cancel_job(session, job_id, client_id=None)


def delete_job_files(session: Session, storage: Storage, job_id: uuid.UUID) -> Job:
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
    already = files_deleted(session, job_id)
    session.rollback()  # no transaction open while deleting files
    storage.delete_job_files(job_id)
    if not already:
        session.add(JobEvent(job_id=job_id, kind=EventKind.FILES_DELETED, data={"by": "admin"}))
        session.commit()
    return get_job(session, job_id, client_id=None)
