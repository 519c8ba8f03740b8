"""What operators see and do, for every client: the admin API, page and metrics use this.

Reads: ``list_jobs`` (filtered, keyset-paginated, newest first), ``job_detail``
(a job with its event timeline), ``job_stats`` (counts, throughput, wait and
run time percentiles, per worker), ``live_workers`` (the ``workers`` registry).
Actions: ``cancel_job``, ``retry_job`` (a failed or canceled job queued again),
``delete_job_files``. Every function takes a SQLAlchemy session and returns
frozen dataclasses; the HTTP layer turns them into JSON.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import (
    ColumnElement,
    Float,
    Integer,
    Select,
    and_,
    bindparam,
    cast,
    func,
    or_,
    select,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.orm import Session

from shared import jobs
from shared.errors import ConflictError, InvalidInputError
from shared.jobs import Enqueue, EventKind, get_job
from shared.models import WORKER_LENGTH, ApiClient, Job, JobEvent, JobStatus, Worker, utcnow
from shared.pagination import Cursor
from shared.storage import LocalStorage
from shared.workers import ALIVE_SECONDS

log = logging.getLogger(__name__)

DEFAULT_STATS_HOURS = 24
MAX_STATS_HOURS = 24 * 31


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


# ---------------------------------------------------------------- parsing query strings
# The admin JSON API and the /admin page read their filters with these functions (the
# page names the client filter ``client``, the API ``client_id``): every bad value is an
# InvalidInputError (400) naming its field, before anything reaches the database.

MAX_ID = 2**31 - 1  # an INTEGER column: a larger id would be a database error, not a miss
MAX_NUMBER_DIGITS = 10
MAX_TIME_LENGTH = 64
SHOWN_CHARACTERS = 40  # of a rejected value, in the error message
_DIGITS = re.compile(r"[0-9]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
JOB_FILTER_FIELDS = ("status", "worker", "created_from", "created_to")


class QueryArgs(Protocol):
    """A query string as Werkzeug's MultiDict gives it."""

    def get(self, key: str) -> str | None: ...
    def getlist(self, key: str) -> list[str]: ...


def shown(raw: str) -> str:
    """A rejected value as an error message quotes it: repr'd, and cut when long."""
    if len(raw) <= SHOWN_CHARACTERS:
        return repr(raw)
    return repr(raw[:SHOWN_CHARACTERS]) + f"… ({len(raw)} characters)"


def parse_statuses(args: QueryArgs) -> tuple[JobStatus, ...]:
    """The ``status`` filter, repeated and/or comma-separated, in JobStatus order;
    an unknown status is a 400 ``invalid_status``."""
    chosen: set[JobStatus] = set()
    for raw in args.getlist("status"):
        for part in filter(None, (p.strip() for p in raw.split(","))):
            try:
                chosen.add(JobStatus(part))
            except ValueError:
                raise InvalidInputError(
                    f"status: {shown(part)} is not one of {', '.join(s.value for s in JobStatus)}",
                    field="status",
                    code="invalid_status",
                ) from None
    return tuple(s for s in JobStatus if s in chosen)


def parse_whole_number(
    raw: str | None, *, field: str, low: int, high: int, code: str
) -> int | None:
    """A whole number ``low``..``high`` written in ASCII digits (no sign, no ``_``, no
    other script's digits); None when absent or empty; otherwise a 400 naming ``field``."""
    if raw is None or raw.strip() == "":
        return None
    text = raw.strip()
    if _DIGITS.fullmatch(text) and len(text) <= MAX_NUMBER_DIGITS and low <= int(text) <= high:
        return int(text)
    raise InvalidInputError(
        f"{field}: {shown(raw)} is not a whole number from {low} to {high}",
        field=field,
        code=code,
    )


def parse_hours(raw: str | None) -> int:
    """The statistics window (``hours``): 1..MAX_STATS_HOURS, DEFAULT_STATS_HOURS when absent."""
    hours = parse_whole_number(
        raw, field="hours", low=1, high=MAX_STATS_HOURS, code="invalid_hours"
    )
    return DEFAULT_STATS_HOURS if hours is None else hours


def parse_worker(raw: str | None, *, field: str = "worker") -> str | None:
    """A worker name as the jobs show it: at most WORKER_LENGTH characters, no control
    characters (PostgreSQL refuses NUL in text); None when absent or empty."""
    if raw is None or raw.strip() == "":
        return None
    text = raw.strip()
    if len(text) > WORKER_LENGTH or _CONTROL.search(text):
        raise InvalidInputError(
            f"{field}: {shown(raw)} is not a worker name (at most {WORKER_LENGTH} "
            "characters, no control characters)",
            field=field,
            code="invalid_worker",
        )
    return text


def parse_time(raw: str | None, *, field: str) -> datetime | None:
    """An ISO 8601 time with a zone (``Z`` or ``+01:00``), in UTC; None when absent or empty."""
    if raw is None or raw.strip() == "":
        return None
    # A "+" left unencoded in a query string arrives as a space: "…T00:00:00 01:00".
    text = re.sub(r" (\d\d(:?\d\d)?)$", r"+\1", raw.strip())
    value: datetime | None = None
    if len(text) <= MAX_TIME_LENGTH and not _CONTROL.search(text):
        try:
            value = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if value.tzinfo is not None:
                value = value.astimezone(UTC)  # out of range once in UTC (year 1 or 9999)
        except (ValueError, OverflowError):
            value = None
    if value is None or value.tzinfo is None:
        raise InvalidInputError(
            f"{field}: must be an ISO 8601 time with a zone, e.g. 2026-11-28T00:00:00Z",
            field=field,
            code="invalid_time",
        )
    return value


def parse_job_filters(args: QueryArgs, *, client_field: str = "client_id") -> JobFilters:
    """The job list's filters from a query string: ``status`` (repeated or comma-separated),
    ``client_field`` (a client id), ``worker``, ``created_from`` (inclusive) and
    ``created_to`` (exclusive, later than ``created_from``). Every bad value is a 400
    naming its field; nothing that reaches the database can make it fail."""
    statuses = parse_statuses(args)
    client_id = parse_whole_number(
        args.get(client_field), field=client_field, low=1, high=MAX_ID, code="invalid_client_id"
    )
    worker = parse_worker(args.get("worker"))
    created_from = parse_time(args.get("created_from"), field="created_from")
    created_to = parse_time(args.get("created_to"), field="created_to")
    if created_from is not None and created_to is not None and created_to <= created_from:
        raise InvalidInputError(
            "created_to: must be later than created_from",
            field="created_to",
            code="invalid_time_range",
        )
    return JobFilters(
        statuses=statuses,
        client_id=client_id,
        worker=worker,
        created_from=created_from,
        created_to=created_to,
    )


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


@dataclass(frozen=True)
class Percentiles:
    """Seconds; None when there was nothing to measure."""

    count: int
    p50: float | None
    p95: float | None


@dataclass(frozen=True)
class HourBucket:
    hour_start: datetime  # UTC, on the hour
    created: int
    finished: int  # succeeded + failed + canceled in that hour


@dataclass(frozen=True)
class WorkerStats:
    """One worker's jobs that finished in the window (by the job's ``worker`` column)."""

    worker: str
    succeeded: int
    failed: int
    canceled: int
    run_seconds: Percentiles  # over its succeeded jobs


@dataclass(frozen=True)
class JobStats:
    """All-time counts by status; the rest over jobs finished in [window_start, now)."""

    now: datetime
    hours: int
    window_start: datetime
    counts: dict[str, int]  # every JobStatus value, zeros included
    total: int
    per_hour: list[HourBucket]  # oldest first, ``hours`` buckets, the last one the current hour
    succeeded: int
    failed: int
    canceled: int
    failure_rate: float | None  # failed / (succeeded + failed); None when both are 0
    queue_seconds: Percentiles  # created → first start, jobs that started and finished in window
    run_seconds: Percentiles  # first start → finish, jobs that succeeded in the window
    workers: list[WorkerStats] = field(default_factory=list)  # by name


@dataclass(frozen=True)
class WorkerInfo:
    """A worker process from the ``workers`` registry."""

    name: str  # hostname/pid, the ``worker`` that jobs show
    hostname: str
    pid: int
    device: str  # "cpu", "cuda:0", …
    device_name: str | None  # the GPU's name; None on the CPU
    device_memory_bytes: int | None  # the GPU's total memory; None on the CPU
    started_at: datetime
    last_heartbeat_at: datetime
    current_job_id: uuid.UUID | None
    jobs_done: int  # succeeded
    jobs_failed: int
    alive: bool  # a heartbeat within shared.workers.ALIVE_SECONDS


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


# ---------------------------------------------------------------- statistics


def job_stats(
    session: Session, *, now: datetime | None = None, hours: int = DEFAULT_STATS_HOURS
) -> JobStats:
    """Counts by status (all time) and, over the last ``hours``, throughput, queue wait
    and run time p50/p95, failure rate, per worker. InvalidInputError if ``hours`` is
    not 1..MAX_STATS_HOURS.

    The window is whole hours: from the start of the hour ``hours - 1`` before the
    current one, to ``now``. Queue wait is created → first start; run time is
    first start → finish, over the jobs that succeeded in the window.
    """
    if not 1 <= hours <= MAX_STATS_HOURS:
        raise InvalidInputError(
            f"hours: must be an integer from 1 to {MAX_STATS_HOURS}",
            field="hours",
            code="invalid_hours",
        )
    now = (now or utcnow()).astimezone(UTC)
    current_hour = now.replace(minute=0, second=0, microsecond=0)
    window_start = current_hour - timedelta(hours=hours - 1)
    counts = _status_counts(session, now)
    per_hour, finished = _window(session, window_start, now, hours)
    return JobStats(
        now=now,
        hours=hours,
        window_start=window_start,
        counts=counts,
        total=sum(counts.values()),
        per_hour=per_hour,
        succeeded=finished.succeeded,
        failed=finished.failed,
        canceled=finished.canceled,
        failure_rate=(
            finished.failed / (finished.succeeded + finished.failed)
            if finished.succeeded + finished.failed
            else None
        ),
        queue_seconds=finished.queue_seconds,
        run_seconds=finished.run_seconds,
        workers=finished.workers,
    )


# All-time counts of the jobs that finished before the previous hour change only
# when such a job is retried or its client removed: each process counts them at
# most this often (an index-only scan of every job), and counts the rest each time.
SETTLED_COUNTS_SECONDS = 300.0
_settled_counts: dict[tuple[str, datetime], tuple[float, dict[str, int]]] = {}
_settled_lock = threading.Lock()


def forget_cached_counts() -> None:
    """Drop this process's cached counts and long windows (after a retry, in tests)."""
    with _settled_lock:
        _settled_counts.clear()
        _long_windows.clear()


def _status_counts(session: Session, now: datetime) -> dict[str, int]:
    boundary = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    key = (str(session.get_bind().engine.url), boundary)
    with _settled_lock:
        cached = _settled_counts.get(key)
    if cached is None or cached[0] < time.monotonic():
        settled = _count_by_status(session, Job.finished_at < boundary)
        with _settled_lock:
            for old in [k for k in _settled_counts if k[0] == key[0]]:
                del _settled_counts[old]
            _settled_counts[key] = (time.monotonic() + SETTLED_COUNTS_SECONDS, settled)
    else:
        settled = cached[1]
    recent = _count_by_status(session, or_(Job.finished_at >= boundary, Job.finished_at.is_(None)))
    return {s.value: settled.get(s.value, 0) + recent.get(s.value, 0) for s in JobStatus}


def _count_by_status(session: Session, where: ColumnElement[bool]) -> dict[str, int]:
    query = select(Job.status, func.count()).where(where).group_by(Job.status)
    return {JobStatus(status).value: int(count) for status, count in session.execute(query)}


# A window longer than a day costs about 0.1 s per 10,000 jobs finished in it
# (bench/README.md): such windows are computed at most once a minute per process.
LONG_WINDOW_HOURS = 24
LONG_WINDOW_CACHE_SECONDS = 60.0
_long_windows: dict[tuple[str, int], tuple[float, list[HourBucket], _Finished]] = {}


def _window(
    session: Session, start: datetime, now: datetime, hours: int
) -> tuple[list[HourBucket], _Finished]:
    if hours <= LONG_WINDOW_HOURS:
        return _per_hour(session, start, now, hours), _finished_in_window(session, start, now)
    key = (str(session.get_bind().engine.url), hours)
    with _settled_lock:
        cached = _long_windows.get(key)
    if cached is not None and cached[0] >= time.monotonic() and cached[1][0].hour_start == start:
        return cached[1], cached[2]
    per_hour, finished = (
        _per_hour(session, start, now, hours),
        _finished_in_window(session, start, now),
    )
    with _settled_lock:
        _long_windows[key] = (time.monotonic() + LONG_WINDOW_CACHE_SECONDS, per_hour, finished)
    return per_hour, finished


def _hour_number(column: Any, dialect: str) -> ColumnElement[Any]:
    """Hours since the epoch, as an integer, on each backend."""
    if dialect == "postgresql":
        # Float arithmetic: extract() gives numeric, slow over many rows.
        return func.floor(cast(func.extract("epoch", column), Float) / 3600.0)
    return cast(func.strftime("%s", column), Integer) // 3600


def _per_hour(session: Session, start: datetime, now: datetime, hours: int) -> list[HourBucket]:
    dialect = session.get_bind().dialect.name
    first = int(start.timestamp()) // 3600
    created = dict.fromkeys(range(first, first + hours), 0)
    finished = dict(created)
    for column, target in ((Job.created_at, created), (Job.finished_at, finished)):
        hour = _hour_number(column, dialect).label("hour")
        query = select(hour, func.count()).where(column >= start, column <= now).group_by(hour)
        for number, count in session.execute(query):
            if int(number) in target:
                target[int(number)] += int(count)
    return [
        HourBucket(datetime.fromtimestamp(h * 3600, UTC), created[h], finished[h]) for h in created
    ]


@dataclass(frozen=True)
class _Finished:
    succeeded: int
    failed: int
    canceled: int
    queue_seconds: Percentiles
    run_seconds: Percentiles
    workers: list[WorkerStats]


def _finished_in_window(session: Session, start: datetime, now: datetime) -> _Finished:
    window = and_(Job.finished_at >= start, Job.finished_at <= now)
    if session.get_bind().dialect.name == "postgresql":
        return _finished_sql(session, window)
    return _finished_python(session, window)


def _seconds(end: Any, begin: Any) -> ColumnElement[Any]:
    return cast(func.extract("epoch", end - begin), Float)


def _finished_sql(session: Session, window: ColumnElement[bool]) -> _Finished:
    # PostgreSQL: percentiles in the database, one pass over the window's rows
    # (found through ix_jobs_finished).
    succeeded = Job.status == JobStatus.SUCCEEDED
    run = _seconds(Job.finished_at, Job.started_at)
    queue = _seconds(Job.started_at, Job.created_at)

    def pct(q: float, value: ColumnElement[Any], *where: ColumnElement[bool]) -> Any:
        aggregate = func.percentile_cont(q).within_group(value)
        return aggregate.filter(*where) if where else aggregate

    def count(status: JobStatus) -> Any:
        return func.count().filter(Job.status == status)

    totals = session.execute(
        select(
            count(JobStatus.SUCCEEDED),
            count(JobStatus.FAILED),
            count(JobStatus.CANCELED),
            func.count(queue),
            pct(0.5, queue),
            pct(0.95, queue),
            func.count().filter(succeeded, Job.started_at.is_not(None)),
            pct(0.5, run, succeeded),
            pct(0.95, run, succeeded),
        ).where(window)
    ).one()
    worker_rows = session.execute(
        select(
            Job.worker,
            count(JobStatus.SUCCEEDED),
            count(JobStatus.FAILED),
            count(JobStatus.CANCELED),
            func.count().filter(succeeded, Job.started_at.is_not(None)),
            pct(0.5, run, succeeded),
            pct(0.95, run, succeeded),
        )
        .where(window, Job.worker.is_not(None))
        .group_by(Job.worker)
        .order_by(Job.worker)
    ).all()
    return _Finished(
        succeeded=totals[0],
        failed=totals[1],
        canceled=totals[2],
        queue_seconds=_percentiles(totals[3], totals[4], totals[5]),
        run_seconds=_percentiles(totals[6], totals[7], totals[8]),
        workers=[
            WorkerStats(r[0], r[1], r[2], r[3], _percentiles(r[4], r[5], r[6])) for r in worker_rows
        ],
    )


def _percentiles(count: int, p50: Any, p95: Any) -> Percentiles:
    return Percentiles(
        int(count),
        None if p50 is None or not count else float(p50),
        None if p95 is None or not count else float(p95),
    )


def _finished_python(session: Session, window: ColumnElement[bool]) -> _Finished:
    # SQLite (tests, one-machine installs): the window's rows, percentiles here.
    rows = session.execute(
        select(Job.status, Job.worker, Job.created_at, Job.started_at, Job.finished_at).where(
            window
        )
    ).all()
    by_status = {s: 0 for s in JobStatus}
    queue: list[float] = []
    run: list[float] = []
    per_worker: dict[str, dict[str, Any]] = {}
    for status, worker, created_at, started_at, finished_at in rows:
        status = JobStatus(status)
        by_status[status] += 1
        if started_at is not None:
            queue.append((started_at - created_at).total_seconds())
        entry = None
        if worker is not None:
            entry = per_worker.setdefault(worker, {s: 0 for s in JobStatus} | {"run": []})
            entry[status] += 1
        if status is JobStatus.SUCCEEDED and started_at is not None and finished_at is not None:
            seconds = (finished_at - started_at).total_seconds()
            run.append(seconds)
            if entry is not None:
                entry["run"].append(seconds)
    return _Finished(
        succeeded=by_status[JobStatus.SUCCEEDED],
        failed=by_status[JobStatus.FAILED],
        canceled=by_status[JobStatus.CANCELED],
        queue_seconds=_python_percentiles(queue),
        run_seconds=_python_percentiles(run),
        workers=[
            WorkerStats(
                name,
                entry[JobStatus.SUCCEEDED],
                entry[JobStatus.FAILED],
                entry[JobStatus.CANCELED],
                _python_percentiles(entry["run"]),
            )
            for name, entry in sorted(per_worker.items())
        ],
    )


def _python_percentiles(values: list[float]) -> Percentiles:
    return Percentiles(len(values), percentile(values, 0.5), percentile(values, 0.95))


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks, as PostgreSQL's percentile_cont."""
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# ---------------------------------------------------------------- workers


def live_workers(
    session: Session, *, now: datetime | None = None, include_dead: bool = False
) -> list[WorkerInfo]:
    """The workers whose last heartbeat is recent (``alive``), by name; with
    ``include_dead`` every registered worker (the dead ones with alive=False)."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=ALIVE_SECONDS)
    query = select(Worker).order_by(Worker.name)
    if not include_dead:
        query = query.where(Worker.last_heartbeat_at >= cutoff)
    return [
        WorkerInfo(
            name=w.name,
            hostname=w.hostname,
            pid=w.pid,
            device=w.device,
            device_name=w.device_name,
            device_memory_bytes=w.device_memory_bytes,
            started_at=w.started_at,
            last_heartbeat_at=w.last_heartbeat_at,
            current_job_id=w.current_job_id,
            jobs_done=w.jobs_done,
            jobs_failed=w.jobs_failed,
            alive=w.last_heartbeat_at >= cutoff,
        )
        for w in session.scalars(query)
    ]


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
