"""Statistics for operators: counts by status, throughput per hour, queue wait and run
time percentiles, per worker (the admin API's and page's ``stats``, the metrics' job counts).

Two back ends compute the finished jobs' figures from the same rows: PostgreSQL
computes the percentiles in SQL (``percentile_cont``, one pass over the window
through ``ix_jobs_finished``); SQLite (tests, one-machine installs) reads the
window's rows and computes them here, with the same interpolation. The time
arithmetic in SQL comes from ``shared.sql_time``.

Two process caches keep repeated requests cheap at a million jobs (the figures
are in bench/README.md): the all-time counts of jobs that finished before the
previous hour (``SETTLED_COUNTS_SECONDS``), and windows longer than a day
(``LONG_WINDOW_CACHE_SECONDS``). ``forget_cached_counts`` drops both (a retry
changes a settled job).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session

from shared.models import Job, JobStatus, utcnow
from shared.sql_time import POSTGRESQL, dialect_of, seconds_between
from shared.stats_series import SeriesBucket, bucket_hours, by_day, hourly_series

DEFAULT_STATS_HOURS = 24
MAX_STATS_HOURS = 24 * 31


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
    # The charts' bars: hours up to a 48 h window, days past that (shared.stats_series),
    # each with its jobs created, finished by outcome, and the queue's depth at its end.
    bucket_hours: int = 1
    buckets: list[SeriesBucket] = field(default_factory=list)


def job_stats(
    session: Session, *, now: datetime | None = None, hours: int = DEFAULT_STATS_HOURS
) -> JobStats:
    """Counts by status (all time) and, over the last ``hours``, throughput, queue wait
    and run time p50/p95, failure rate, per worker.

    ``hours`` is 1..MAX_STATS_HOURS, as ``shared.admin_filters.parse_hours`` reads it
    from a request (the one place that checks it). The window is whole hours: from
    the start of the hour ``hours - 1`` before the current one, to ``now``. Queue
    wait is created → first start; run time is first start → finish, over the
    jobs that succeeded in the window.
    """
    now = (now or utcnow()).astimezone(UTC)
    window_start = window_start_for(now, hours)
    counts = status_counts(session, now=now)
    series, finished = _window(session, window_start, now, hours)
    width = bucket_hours(hours)
    return JobStats(
        now=now,
        hours=hours,
        window_start=window_start,
        counts=counts,
        total=sum(counts.values()),
        per_hour=[HourBucket(b.start, b.created, b.finished) for b in series],
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
        bucket_hours=width,
        buckets=series if width == 1 else by_day(series),
    )


def window_start_for(now: datetime, hours: int) -> datetime:
    """The start of a window of ``hours``: the start of the hour ``hours - 1`` before now's."""
    return now.astimezone(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(
        hours=hours - 1
    )


def worker_stats(
    session: Session, *, now: datetime | None = None, hours: int = DEFAULT_STATS_HOURS
) -> list[WorkerStats]:
    """``job_stats(...).workers`` alone, over the same window: what the workers page shows."""
    now = (now or utcnow()).astimezone(UTC)
    return _finished_in_window(session, window_start_for(now, hours), now).workers


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


def status_counts(session: Session, *, now: datetime | None = None) -> dict[str, int]:
    """Every job by status, all time: every JobStatus value, zeros included."""
    now = (now or utcnow()).astimezone(UTC)
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
_long_windows: dict[tuple[str, int], tuple[float, list[SeriesBucket], _Finished]] = {}


def _window(
    session: Session, start: datetime, now: datetime, hours: int
) -> tuple[list[SeriesBucket], _Finished]:
    if hours <= LONG_WINDOW_HOURS:
        return hourly_series(session, start, now, hours), _finished_in_window(session, start, now)
    key = (str(session.get_bind().engine.url), hours)
    with _settled_lock:
        cached = _long_windows.get(key)
    if cached is not None and cached[0] >= time.monotonic() and cached[1][0].start == start:
        return cached[1], cached[2]
    series, finished = (
        hourly_series(session, start, now, hours),
        _finished_in_window(session, start, now),
    )
    with _settled_lock:
        _long_windows[key] = (time.monotonic() + LONG_WINDOW_CACHE_SECONDS, series, finished)
    return series, finished


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
    if dialect_of(session) == POSTGRESQL:
        return _finished_sql(session, window)
    return _finished_python(session, window)


def _finished_sql(session: Session, window: ColumnElement[bool]) -> _Finished:
    # PostgreSQL: percentiles in the database, one pass over the window's rows
    # (found through ix_jobs_finished).
    succeeded = Job.status == JobStatus.SUCCEEDED
    run = seconds_between(POSTGRESQL, Job.started_at, Job.finished_at)
    queue = seconds_between(POSTGRESQL, Job.created_at, Job.started_at)

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
