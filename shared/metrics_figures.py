"""The figures ``GET /metrics`` shows, read from the shared truth at scrape time.

gunicorn runs several processes, so counters kept in one process would each
see only part of the traffic; every figure here is read from the ``jobs``
table, the ``workers`` registry and the broker's Redis lists instead, so any
process answers the same. ``api.metrics`` turns them into Prometheus text; the
backlog an autoscaler acts on comes from ``shared.backlog``.

The wait and run time histograms are cumulative over every finished job in the
database. Aggregating a million rows at every scrape would cost seconds, so
each process does it once (bucketed in SQL), then at each scrape reads only the
jobs that finished since (the ``finished_at`` index), re-reading the last
``OVERLAP`` so that a row committed a little after its ``finished_at`` is not
missed (each job is counted once per ``(id, finished_at)``: a retried job's
second run counts again).
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from shared.admin_reads import live_workers
from shared.backlog import Backlog, backlog
from shared.celery_app import JOBS_QUEUE, MAINTENANCE_QUEUE
from shared.models import Job, JobStatus
from shared.sql_time import at_most, dialect_of, disable_jit, seconds_between
from shared.stats import status_counts

# created → first start: seconds to hours
WAIT_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 12 * 3600)
# first start → finish
RUN_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 2 * 3600, 6 * 3600)
FINISHED = tuple(s.value for s in JobStatus if s.is_finished)
# A job's row may commit a little after the finished_at its worker wrote: re-read this much.
OVERLAP = timedelta(minutes=10)
# kombu's Redis transport keeps a queue's messages of priority p > 0 under "<queue>\x06\x16<p>"
KOMBU_PRIORITY_SEP = "\x06\x16"
KOMBU_PRIORITY_STEPS = (0, 3, 6, 9)
KOMBU_UNACKED = "unacked"
QUEUES = (JOBS_QUEUE, MAINTENANCE_QUEUE)


class Histogram:
    """Observations per bucket (the last one over every bound), their count and sum."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.per_bucket = [0] * (len(self.bounds) + 1)  # not cumulative; the last: over all bounds
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.per_bucket[_bucket_index(self.bounds, value)] += 1
        self.total += value

    def add_cumulative(self, cumulative: Sequence[int], count: int, total: float) -> None:
        """Add counts given as Prometheus does: observations <= each bound, and in all."""
        previous = 0
        for index, running in enumerate([*cumulative, count]):
            self.per_bucket[index] += running - previous
            previous = running
        self.total += total

    @property
    def count(self) -> int:
        return sum(self.per_bucket)

    def cumulative(self) -> list[tuple[float, int]]:
        """(bound, observations <= bound) for every bound, the last one infinity."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.per_bucket, strict=True):
            running += count
            out.append((float(bound), running))
        return out


def _bucket_index(bounds: Sequence[float], value: float) -> int:
    for index, bound in enumerate(bounds):
        if value <= bound:
            return index
    return len(bounds)


@dataclass
class FinishedJobHistograms:
    """Wait (created → first start) and run (first start → end) times of finished jobs."""

    wait: Histogram = field(default_factory=lambda: Histogram(WAIT_BUCKETS))
    run: dict[str, Histogram] = field(
        default_factory=lambda: {s: Histogram(RUN_BUCKETS) for s in FINISHED}
    )
    watermark: datetime | None = None  # the latest finished_at counted
    recent: set[tuple[uuid.UUID, datetime]] = field(default_factory=set)  # counted, in the overlap

    def update(self, session: Session, now: datetime) -> None:
        if self.watermark is None:
            self._load(session, now - OVERLAP)
        assert self.watermark is not None
        since = self.watermark - OVERLAP
        rows = session.execute(
            select(Job.id, Job.status, Job.created_at, Job.started_at, Job.finished_at).where(
                Job.finished_at >= since
            )
        )
        watermark = self.watermark
        for job_id, status, created_at, started_at, finished_at in rows:
            if finished_at is None or (job_id, finished_at) in self.recent:
                continue
            self.recent.add((job_id, finished_at))
            watermark = max(watermark, finished_at)
            if started_at is not None:
                self._observe(status, created_at, started_at, finished_at)
        self.watermark = watermark
        cutoff = watermark - OVERLAP
        self.recent = {key for key in self.recent if key[1] >= cutoff}

    def _observe(
        self, status: JobStatus, created: datetime, started: datetime, finished: datetime
    ) -> None:
        self.wait.observe(max(0.0, (started - created).total_seconds()))
        histogram = self.run.get(str(status.value))
        if histogram is not None:
            histogram.observe(max(0.0, (finished - started).total_seconds()))

    def _load(self, session: Session, before: datetime) -> None:
        """Everything that finished before ``before``, bucketed in SQL (once per process)."""
        dialect = dialect_of(session)
        started = Job.started_at.is_not(None) & (Job.finished_at < before)
        wait = seconds_between(dialect, Job.created_at, Job.started_at)
        run = seconds_between(dialect, Job.started_at, Job.finished_at)
        # One scan, grouped by status only (a handful of groups: a hash aggregate),
        # each bucket a SUM(CASE): cumulative counts, as Prometheus wants them.
        # Compiling these expressions costs more than the scan (1.8 s of 2.9 s at a
        # million jobs on PostgreSQL).
        disable_jit(session)
        columns: list[Any] = [Job.status, func.count(), func.sum(wait), func.sum(run)]
        columns += [
            func.sum(case((at_most(dialect, Job.created_at, Job.started_at, b), 1), else_=0))
            for b in WAIT_BUCKETS
        ]
        columns += [
            func.sum(case((at_most(dialect, Job.started_at, Job.finished_at, b), 1), else_=0))
            for b in RUN_BUCKETS
        ]
        n_wait = len(WAIT_BUCKETS)
        for row in session.execute(select(*columns).where(started).group_by(Job.status)):
            status, count, wait_total, run_total = row[:4]
            wait_counts = [int(c or 0) for c in row[4 : 4 + n_wait]]
            run_counts = [int(c or 0) for c in row[4 + n_wait :]]
            self.wait.add_cumulative(wait_counts, int(count), float(wait_total or 0.0))
            histogram = self.run.get(str(getattr(status, "value", status)))
            if histogram is not None:
                histogram.add_cumulative(run_counts, int(count), float(run_total or 0.0))
        # The rows just before ``before`` are counted: remember them so the overlap skips them.
        self.recent = {
            (job_id, finished_at)
            for job_id, finished_at in session.execute(
                select(Job.id, Job.finished_at).where(
                    Job.finished_at >= before - OVERLAP, Job.finished_at < before
                )
            )
            if finished_at is not None
        }
        self.watermark = before


@dataclass(frozen=True)
class DatabaseFigures:
    by_status: dict[str, int]  # every JobStatus value, zeros included
    workers_live: int
    workers_busy: int  # live workers running a job
    wait: Histogram  # a copy, read at the same time as the rest
    run: dict[str, Histogram]  # by finished status
    backlog: Backlog  # the queued and running jobs' expected seconds, the scaling signal


def database_figures(
    session: Session, histograms: FinishedJobHistograms, now: datetime
) -> DatabaseFigures:
    """The database's figures; ``histograms`` (a process's own) first counts what finished
    since its last call."""
    histograms.update(session, now)
    # The statistics' all-time counts: the settled part is cached per process, so a
    # scrape does not count a million rows.
    by_status = status_counts(session, now=now)
    workers = live_workers(session, now=now)
    return DatabaseFigures(
        by_status=by_status,
        workers_live=len(workers),
        workers_busy=sum(1 for w in workers if w.current_job_id is not None),
        wait=copy.deepcopy(histograms.wait),
        run=copy.deepcopy(histograms.run),
        backlog=backlog(
            session, now, live_workers=len(workers), queued_count=by_status[JobStatus.QUEUED.value]
        ),
    )


@dataclass(frozen=True)
class QueueFigures:
    depth: dict[str, int]  # messages waiting, by queue (every priority)
    unacked: int  # delivered to a worker, not yet acknowledged


def queue_figures(redis: Redis, prefix: str) -> QueueFigures | None:
    """The broker's queue lengths from Redis; None when Redis does not answer."""
    keys = [
        (queue, prefix + (queue if p == 0 else f"{queue}{KOMBU_PRIORITY_SEP}{p}"))
        for queue in QUEUES
        for p in KOMBU_PRIORITY_STEPS
    ]
    try:
        pipe = redis.pipeline(transaction=False)
        for _, key in keys:
            pipe.llen(key)
        pipe.hlen(prefix + KOMBU_UNACKED)
        answers = pipe.execute()
    except (RedisError, OSError):
        return None
    depth = dict.fromkeys(QUEUES, 0)
    for (queue, _), length in zip(keys, answers[:-1], strict=True):
        depth[queue] += int(length)
    return QueueFigures(depth=depth, unacked=int(answers[-1]))
