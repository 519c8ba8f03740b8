"""What operators see of every client's jobs.

Reads: ``list_jobs`` (filtered, keyset-paginated, newest first, or only the
jobs newer than a row already shown), ``status_counts`` (by status under the
other filters), ``find_jobs`` (by the beginning of an id) and ``job_detail`` (a
job with its event timeline); what operators do to jobs is in
``shared.admin_actions``. Every function takes a SQLAlchemy session and returns
frozen dataclasses; the admin API and page turn them into JSON or HTML. The
statistics are in ``shared.stats``, the other operator reads (workers, clients,
live progress) in ``shared.admin_reads``, the parsing of the front ends' query
strings in ``shared.admin_filters``.
"""

from __future__ import annotations

import functools
import threading
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    bindparam,
    func,
    select,
    tuple_,
    union_all,
)
from sqlalchemy.orm import Session

from shared.job_store import get_job
from shared.job_view import JOB_VIEW_COLUMNS, JOB_VIEW_FIELDS, JobView, job_timings
from shared.models import ApiClient, EventKind, Job, JobEvent, JobStatus, utcnow
from shared.pagination import Cursor
from shared.stats import status_counts as all_status_counts


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
    """One job as a table row: its read model (so ``shared.job_json.job_dict`` takes it)
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
    cancel_requested: bool
    lease_owner: str | None
    lease_expires_at: datetime | None
    updated_at: datetime
    queue_seconds: float  # created → first start (→ now while still queued)
    run_seconds: float | None  # first start → finish (→ now while running); None if never started
    files_deleted: bool  # a files_deleted event exists (retention or an admin)
    events: list[TimelineEvent]  # oldest first
    cached_from: uuid.UUID | None = None  # the job its result was copied from (result cache)
    # In-flight sharing (shared.follows): the job whose run it shares (which computed it),
    # and the jobs that share this one's run.
    follows: uuid.UUID | None = None
    followers: tuple[uuid.UUID, ...] = ()


def list_jobs(
    session: Session,
    filters: JobFilters,
    *,
    limit: int,
    cursor: Cursor | None,
    newer_than: Cursor | None = None,
) -> AdminJobPage:
    """Every client's jobs matching ``filters``, newest first (created_at, id), one keyset page.

    ``cursor``: only the jobs older than it (the next page). ``newer_than``: only
    the jobs newer than it (the rows a page that shows it lacks; ``next_cursor``
    then says that more than ``limit`` are newer). Each filter shape walks an
    index in order ((created_at, id), (status, …), (client_id, …), (worker, …))
    and stops after ``limit + 1`` rows, however deep the cursor; several statuses
    are one ordered index walk each, merged.
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
    if newer_than is not None:
        values |= {"newer_at": newer_than.created_at, "newer_id": newer_than.job_id}
    statement = _list_statement(
        len(statuses),
        client=filters.client_id is not None,
        worker=filters.worker is not None,
        created_from=filters.created_from is not None,
        created_to=filters.created_to is not None,
        after=cursor is not None,
        newer=newer_than is not None,
    )
    rows = session.execute(statement, {k: v for k, v in values.items() if v is not None}).all()
    items = [_admin_job(row._mapping) for row in rows]
    if len(items) <= limit:
        return AdminJobPage(items, None)
    last = items[limit - 1]
    return AdminJobPage(items[:limit], Cursor(last.created_at, last.id).encode())


@functools.lru_cache(maxsize=512)
def _list_statement(
    n_statuses: int,
    *,
    client: bool,
    worker: bool,
    created_from: bool,
    created_to: bool,
    after: bool,
    newer: bool = False,
) -> Select[Any]:
    """The list query for one filter shape, values as bound parameters: built once
    per shape (building it cost as much as running it)."""
    conditions = _conditions(
        client=client, worker=worker, created_from=created_from, created_to=created_to
    )
    key = tuple_(Job.created_at, Job.id)
    if after:
        # A row comparison: PostgreSQL turns it into one index range, whatever the depth.
        conditions.append(
            key
            < tuple_(
                bindparam("cursor_at", type_=Job.created_at.type),
                bindparam("cursor_id", type_=Job.id.type),
            )
        )
    if newer:
        conditions.append(
            key
            > tuple_(
                bindparam("newer_at", type_=Job.created_at.type),
                bindparam("newer_id", type_=Job.id.type),
            )
        )
    wanted = bindparam("wanted", type_=Integer)

    def status_is(i: int) -> ColumnElement[bool]:
        return Job.status == bindparam(f"status_{i}", type_=Job.status.type)

    if n_statuses <= 1:
        where = [*conditions, status_is(0)] if n_statuses else conditions
        page = _ordered(select(*JOB_VIEW_COLUMNS).where(*where), wanted).subquery()
    else:
        # Several statuses: one ordered index walk each, merged.
        parts = [
            _ordered(select(*JOB_VIEW_COLUMNS).where(*conditions, status_is(i)), wanted).subquery()
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


def _conditions(
    *, client: bool, worker: bool, created_from: bool, created_to: bool
) -> list[ColumnElement[bool]]:
    """The filters but the status, as bound parameters of the same names as their fields."""
    conditions: list[ColumnElement[bool]] = []
    if client:
        conditions.append(Job.client_id == bindparam("client_id"))
    if worker:
        conditions.append(Job.worker == bindparam("worker", type_=Job.worker.type))
    if created_from:
        conditions.append(Job.created_at >= bindparam("created_from", type_=Job.created_at.type))
    if created_to:
        conditions.append(Job.created_at < bindparam("created_to", type_=Job.created_at.type))
    return conditions


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


# Counts under filters are a GROUP BY over the filter's index; a page polling them
# every few seconds is served from this per-process cache in between.
COUNTS_CACHE_SECONDS = 5.0
_counts_cache: dict[tuple[str, JobFilters], tuple[float, dict[str, int]]] = {}
_counts_lock = threading.Lock()


def status_counts(session: Session, filters: JobFilters, *, fresh: bool = False) -> dict[str, int]:
    """How many jobs match ``filters`` but their status, by status (zeros included).

    Without a client, worker or time filter: the statistics' all-time counts
    (``shared.stats.status_counts``, their settled part cached). With one: a
    count through the filter's index, kept ``COUNTS_CACHE_SECONDS`` per process
    (``fresh``: counted now, as a page load and a confirmation want it).
    """
    general = replace(filters, statuses=())
    if general == JobFilters():
        return all_status_counts(session)
    key = (str(session.get_bind().engine.url), general)
    with _counts_lock:
        cached = _counts_cache.get(key)
        if cached is not None and cached[0] > time.monotonic() and not fresh:
            return dict(cached[1])
    conditions = _conditions(
        client=general.client_id is not None,
        worker=general.worker is not None,
        created_from=general.created_from is not None,
        created_to=general.created_to is not None,
    )
    values = {
        "client_id": general.client_id,
        "worker": general.worker,
        "created_from": general.created_from,
        "created_to": general.created_to,
    }
    query = select(Job.status, func.count()).where(*conditions).group_by(Job.status)
    found = {JobStatus(status).value: int(n) for status, n in session.execute(query, values)}
    counts = {s.value: found.get(s.value, 0) for s in JobStatus}
    with _counts_lock:
        if len(_counts_cache) > 1000:
            _counts_cache.clear()
        _counts_cache[key] = (time.monotonic() + COUNTS_CACHE_SECONDS, counts)
    return dict(counts)


def find_jobs(session: Session, id_prefix: str, *, limit: int) -> list[AdminJob]:
    """The jobs whose id starts with ``id_prefix`` (1–32 lowercase hex digits, no dashes),
    newest first, at most ``limit``: one range of the primary key's index."""
    low = uuid.UUID(id_prefix.ljust(32, "0"))
    high = uuid.UUID(id_prefix.ljust(32, "f"))
    page = (
        select(*JOB_VIEW_COLUMNS)
        .where(Job.id >= low, Job.id <= high)
        .order_by(Job.id)
        .limit(limit)
        .subquery()
    )
    query = _ordered(
        select(page, ApiClient.name.label("client_name")).join(
            ApiClient, ApiClient.id == page.c.client_id
        ),
        limit,
        page.c,
    )
    return [_admin_job(row._mapping) for row in session.execute(query)]


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
    row = {name: getattr(job, name) for name in JOB_VIEW_FIELDS} | {
        "client_name": client_name or ""
    }
    timings = job_timings(job.created_at, job.started_at, job.finished_at, now)
    return AdminJobDetail(
        job=_admin_job(row),
        cancel_requested=job.cancel_requested,
        lease_owner=job.lease_owner,
        lease_expires_at=job.lease_expires_at,
        updated_at=job.updated_at,
        queue_seconds=timings.queue_seconds,
        run_seconds=timings.run_seconds,
        files_deleted=any(e.kind == EventKind.FILES_DELETED for e in events),
        events=events,
        cached_from=job.cached_from,
        follows=job.follows,
        followers=tuple(
            session.scalars(select(Job.id).where(Job.follows == job_id).order_by(Job.created_at))
        ),
    )
