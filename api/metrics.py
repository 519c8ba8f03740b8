"""``GET /metrics``: Prometheus metrics computed from the database and Redis at scrape time.

gunicorn runs several processes, so counters kept in one process would each
see only part of the traffic; every figure here is read from the shared truth
instead (the ``jobs`` table, the ``workers`` registry, the broker's Redis
lists), so any process answers the same. The database part is a few aggregate
queries (one per metric family), cached for ``CACHE_SECONDS`` per process so
that several scrapers cost no more than one.

Open by default (scrape it over the internal network); with
``STYLEQUEUE_METRICS_KEY`` set it requires ``Authorization: Bearer <that key>``.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, current_app, request
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError
from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.orm import Session

from api.services import Services, services
from shared import admin
from shared.auth import bearer_token
from shared.celery_app import JOBS_QUEUE, MAINTENANCE_QUEUE
from shared.errors import UnauthorizedError
from shared.models import Job, JobStatus

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
FINISHED_LABELS = frozenset(s.value for s in JobStatus if s.is_finished)


@blueprint.get("/metrics")
def metrics() -> Response:
    svc = services()
    key = svc.settings.metrics_key
    if key is not None:
        sent = bearer_token(request.headers.get("Authorization"))
        if not hmac.compare_digest(sent, key):
            raise UnauthorizedError("not the metrics key", code="invalid_api_key")
    registry: CollectorRegistry | None = current_app.extensions.get(EXTENSION_KEY)
    if registry is None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(StylequeueCollector(svc))
        current_app.extensions[EXTENSION_KEY] = registry
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


@dataclass(frozen=True)
class _HistogramRow:
    labels: tuple[str, ...]
    count: int
    total: float
    buckets: tuple[int, ...]  # cumulative counts, one per bound


@dataclass(frozen=True)
class DatabaseFigures:
    by_status: dict[str, int]
    wait: list[_HistogramRow]
    run: list[_HistogramRow]
    workers_live: int
    workers_busy: int


class StylequeueCollector:
    """Yields every stylequeue metric family on each scrape."""

    def __init__(self, svc: Services) -> None:
        self._svc = svc
        self._lock = threading.Lock()
        self._cached: tuple[float, DatabaseFigures] | None = None

    def collect(self) -> Iterator[Metric]:
        figures = self._database_figures()
        jobs = GaugeMetricFamily(
            "stylequeue_jobs", "Jobs in the database by status.", labels=["status"]
        )
        for status in JobStatus:
            jobs.add_metric([status.value], figures.by_status.get(status.value, 0))
        yield jobs
        yield _histogram(
            "stylequeue_job_wait_seconds",
            "Time from submit to a worker's first claim, over every job that has started.",
            [],
            WAIT_BUCKETS,
            figures.wait,
        )
        yield _histogram(
            "stylequeue_job_run_seconds",
            "Time from a job's first start to its end, over every finished job that started.",
            ["status"],
            RUN_BUCKETS,
            figures.run,
        )
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
        with self._lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < CACHE_SECONDS:
                return self._cached[1]
            with self._svc.db.session() as session:
                figures = database_figures(session)
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


def _histogram(
    name: str,
    documentation: str,
    labels: list[str],
    bounds: Sequence[float],
    rows: list[_HistogramRow],
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=labels)
    for row in rows:
        buckets: list[tuple[str, float]] = [
            (_bound(b), float(c)) for b, c in zip(bounds, row.buckets, strict=True)
        ]
        buckets.append(("+Inf", float(row.count)))
        family.add_metric(list(row.labels), buckets, row.total)
    return family


def _bound(value: float) -> str:
    return repr(float(value))


def seconds_between(session: Session, start: Any, end: Any) -> ColumnElement[float]:
    """``end - start`` in seconds, in SQL, on PostgreSQL and SQLite."""
    if session.get_bind().dialect.name == "postgresql":
        return func.extract("epoch", end - start)  # type: ignore[return-value]
    return (func.julianday(end) - func.julianday(start)) * 86400.0


def database_figures(session: Session) -> DatabaseFigures:
    """Every database figure of a scrape: four aggregate queries."""
    by_status = {
        str(status.value if isinstance(status, JobStatus) else status): int(count)
        for status, count in session.execute(select(Job.status, func.count()).group_by(Job.status))
    }
    wait = _histogram_rows(
        session,
        seconds_between(session, Job.created_at, Job.started_at),
        WAIT_BUCKETS,
        Job.started_at.is_not(None),
        group_by=None,
    )
    run = _histogram_rows(
        session,
        seconds_between(session, Job.started_at, Job.finished_at),
        RUN_BUCKETS,
        Job.started_at.is_not(None) & Job.finished_at.is_not(None),
        group_by=Job.status,
    )
    workers = admin.live_workers(session)
    return DatabaseFigures(
        by_status=by_status,
        wait=wait,
        run=run,
        workers_live=len(workers),
        workers_busy=sum(1 for w in workers if w.current_job_id is not None),
    )


def _histogram_rows(
    session: Session,
    seconds: ColumnElement[float],
    bounds: Sequence[float],
    where: ColumnElement[bool],
    *,
    group_by: Any,
) -> list[_HistogramRow]:
    columns: list[Any] = [func.count(), func.coalesce(func.sum(seconds), 0.0)]
    columns += [func.coalesce(func.sum(case((seconds <= b, 1), else_=0)), 0) for b in bounds]
    if group_by is None:
        row = session.execute(select(*columns).where(where)).one()
        return [_HistogramRow((), int(row[0]), float(row[1]), tuple(int(c) for c in row[2:]))]
    query = select(group_by, *columns).where(where).group_by(group_by)
    found: dict[str, _HistogramRow] = {}
    for row in session.execute(query):
        label = row[0].value if isinstance(row[0], JobStatus) else str(row[0])
        found[label] = _HistogramRow(
            (label,), int(row[1]), float(row[2]), tuple(int(c) for c in row[3:])
        )
    # Every finished status always has its series (zeros until a job ends that way).
    empty = tuple(0 for _ in bounds)
    return [
        found.get(s.value, _HistogramRow((s.value,), 0, 0.0, empty))
        for s in JobStatus
        if s.is_finished
    ] + [row for label, row in found.items() if label not in FINISHED_LABELS]
