"""``GET /metrics``: Prometheus metrics computed from the database and Redis at scrape time.

gunicorn runs several processes, so counters kept in one process would each
see only part of the traffic; every figure here is read from the shared truth
instead (the ``jobs`` table, the ``workers`` registry, the broker's Redis
lists), so any process answers the same. The database part is cached for
``CACHE_SECONDS`` per process so that several scrapers cost no more than one.

The wait and run time histograms are cumulative over every finished job in the
database. Aggregating a million rows at every scrape would cost seconds, so
each process does it once (bucketed in SQL), then at each scrape reads only the
jobs that finished since (the ``finished_at`` index), re-reading the last
``OVERLAP`` so that a row committed a little after its ``finished_at`` is not
missed (each job is counted once per ``(id, finished_at)``: a retried job's
second run counts again).

Open by default (scrape it over the internal network); with
``STYLEQUEUE_METRICS_KEY`` set it requires ``Authorization: Bearer <that key>``.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from flask import Blueprint, Response, current_app, request
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError
from sqlalchemy import ColumnElement, case, func, select, text
from sqlalchemy.orm import Session

from api.services import Services, services
from shared import admin
from shared.auth import bearer_token, same_secret
from shared.celery_app import JOBS_QUEUE, MAINTENANCE_QUEUE
from shared.errors import UnauthorizedError
from shared.models import Job, JobStatus, utcnow

blueprint = Blueprint("metrics", __name__)

EXTENSION_KEY = "stylequeue_metrics"
CACHE_SECONDS = 5.0
# created → first start: seconds to hours
WAIT_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 12 * 3600)
# first start → finish
RUN_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 2 * 3600, 6 * 3600)
# kombu's Redis transport keeps a queue's messages of priority p > 0 under "<queue>\x06\x16<p>"
KOMBU_PRIORITY_SEP = "\x06\x16"
KOMBU_PRIORITY_STEPS = (0, 3, 6, 9)
KOMBU_UNACKED = "unacked"
QUEUES = (JOBS_QUEUE, MAINTENANCE_QUEUE)
FINISHED = tuple(s.value for s in JobStatus if s.is_finished)
# A job's row may commit a little after the finished_at its worker wrote: re-read this much.
OVERLAP = timedelta(minutes=10)


@blueprint.get("/metrics")
def metrics() -> Response:
    svc = services()
    key = svc.settings.metrics_key
    if key is not None:
        sent = bearer_token(request.headers.get("Authorization"))
        if not same_secret(sent, key):
            raise UnauthorizedError("not the metrics key", code="invalid_api_key")
    registry: CollectorRegistry | None = current_app.extensions.get(EXTENSION_KEY)
    if registry is None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(StylequeueCollector(svc))
        current_app.extensions[EXTENSION_KEY] = registry
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


class Histogram:
    """Cumulative bucket counts (the last one +Inf), a count and a sum."""

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

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.per_bucket, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), float(running)))
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
        started = Job.started_at.is_not(None) & (Job.finished_at < before)
        wait = seconds_between(session, Job.created_at, Job.started_at)
        run = seconds_between(session, Job.started_at, Job.finished_at)
        # One scan, grouped by status only (a handful of groups: a hash aggregate),
        # each bucket a SUM(CASE): cumulative counts, as Prometheus wants them.
        if session.get_bind().dialect.name == "postgresql":
            # JIT compiling these expressions costs more than the scan (1.8 s of 2.9 s
            # at a million jobs); SET LOCAL ends with this session's transaction.
            session.execute(text("SET LOCAL jit = off"))
        columns: list[Any] = [Job.status, func.count(), func.sum(wait), func.sum(run)]
        columns += [
            func.sum(case((at_most(session, Job.created_at, Job.started_at, b), 1), else_=0))
            for b in WAIT_BUCKETS
        ]
        columns += [
            func.sum(case((at_most(session, Job.started_at, Job.finished_at, b), 1), else_=0))
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
    by_status: dict[str, int]
    workers_live: int
    workers_busy: int


class StylequeueCollector:
    """Yields every stylequeue metric family on each scrape."""

    def __init__(self, svc: Services) -> None:
        self._svc = svc
        self._lock = threading.Lock()
        self._cached: tuple[float, DatabaseFigures] | None = None
        self._histograms = FinishedJobHistograms()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            figures = self._database_figures()
            wait = _histogram_family(
                "stylequeue_job_wait_seconds",
                "Time from submit to a worker's first claim, over every finished job that started.",
                [],
                [((), self._histograms.wait)],
            )
            run = _histogram_family(
                "stylequeue_job_run_seconds",
                "Time from a job's first start to its end, over every finished job that started.",
                ["status"],
                [((status,), h) for status, h in self._histograms.run.items()],
            )
        jobs = GaugeMetricFamily(
            "stylequeue_jobs", "Jobs in the database by status.", labels=["status"]
        )
        for status in JobStatus:
            jobs.add_metric([status.value], figures.by_status.get(status.value, 0))
        yield jobs
        yield wait
        yield run
        yield GaugeMetricFamily(
            "stylequeue_workers_live",
            "Workers with a recent heartbeat in the workers registry.",
            value=figures.workers_live,
        )
        yield GaugeMetricFamily(
            "stylequeue_workers_busy",
            "Live workers running a job now.",
            value=figures.workers_busy,
        )
        yield from self._redis_metrics()

    def _database_figures(self) -> DatabaseFigures:
        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] < CACHE_SECONDS:
            return self._cached[1]
        with self._svc.db.session() as session:
            self._histograms.update(session, utcnow())
            # The admin statistics' all-time counts: the settled part cached per process,
            # so a scrape does not count a million rows (shared.admin._status_counts).
            by_status = admin.job_stats(session, hours=1).counts
            workers = admin.live_workers(session)
        figures = DatabaseFigures(
            by_status=by_status,
            workers_live=len(workers),
            workers_busy=sum(1 for w in workers if w.current_job_id is not None),
        )
        self._cached = (now, figures)
        return figures

    def _redis_metrics(self) -> Iterator[Metric]:
        prefix = self._svc.settings.redis_prefix
        keys = [
            (queue, prefix + (queue if p == 0 else f"{queue}{KOMBU_PRIORITY_SEP}{p}"))
            for queue in QUEUES
            for p in KOMBU_PRIORITY_STEPS
        ]
        up = GaugeMetricFamily("stylequeue_redis_up", "1 if the broker's Redis answered.")
        try:
            pipe = self._svc.redis.pipeline(transaction=False)
            for _, key in keys:
                pipe.llen(key)
            pipe.hlen(prefix + KOMBU_UNACKED)
            answers = pipe.execute()
        except (RedisError, OSError):
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        depth = GaugeMetricFamily(
            "stylequeue_queue_depth",
            "Messages waiting in the broker's queue (Redis LLEN, every priority).",
            labels=["queue"],
        )
        totals = dict.fromkeys(QUEUES, 0)
        for (queue, _), length in zip(keys, answers[:-1], strict=True):
            totals[queue] += int(length)
        for queue, total in totals.items():
            depth.add_metric([queue], total)
        yield depth
        yield GaugeMetricFamily(
            "stylequeue_queue_unacked",
            "Messages delivered to a worker and not yet acknowledged (the jobs it is running).",
            value=int(answers[-1]),
        )


def _histogram_family(
    name: str,
    documentation: str,
    labels: list[str],
    series: list[tuple[tuple[str, ...], Histogram]],
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=labels)
    for label_values, histogram in series:
        family.add_metric(list(label_values), histogram.cumulative(), histogram.total)
    return family


def seconds_between(session: Session, start: Any, end: Any) -> ColumnElement[float]:
    """``end - start`` in seconds (a float), in SQL, on PostgreSQL and SQLite."""
    if session.get_bind().dialect.name == "postgresql":
        # date_part is double precision; EXTRACT would be numeric, several times slower.
        return func.date_part("epoch", end - start)
    return (func.julianday(end) - func.julianday(start)) * 86400.0


def at_most(session: Session, start: Any, end: Any, seconds: float) -> ColumnElement[bool]:
    """``end - start <= seconds``: on PostgreSQL an interval comparison (no conversion per row)."""
    if session.get_bind().dialect.name == "postgresql":
        return (end - start) <= timedelta(seconds=seconds)
    return seconds_between(session, start, end) <= seconds
