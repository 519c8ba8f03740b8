"""``GET /metrics``: Prometheus text of the figures ``shared.metrics_figures`` reads.

Every figure comes from the shared truth (the database and the broker's Redis)
at scrape time, so any gunicorn process answers the same; this module only
renders them. The database part is cached for ``CACHE_SECONDS`` per process so
that several scrapers cost no more than one.

Open by default (scrape it over the internal network); with
``STYLEQUEUE_METRICS_KEY`` set it requires ``Authorization: Bearer <that key>``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from flask import Blueprint, Response, current_app, request
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from api.services import Services, services
from shared.auth import bearer_token, same_secret
from shared.backlog import Backlog
from shared.errors import UnauthorizedError
from shared.metrics_figures import (
    DatabaseFigures,
    FinishedJobHistograms,
    Histogram,
    database_figures,
    queue_figures,
)
from shared.models import JobStatus, utcnow

blueprint = Blueprint("metrics", __name__)

EXTENSION_KEY = "stylequeue_metrics"
CACHE_SECONDS = 5.0
# The text format every Prometheus version reads, with its charset once: given as
# ``mimetype`` Flask would append a second ``; charset=utf-8``.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


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
    return Response(generate_latest(registry), content_type=CONTENT_TYPE)


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
        jobs = GaugeMetricFamily(
            "stylequeue_jobs", "Jobs in the database by status.", labels=["status"]
        )
        for status in JobStatus:
            jobs.add_metric([status.value], figures.by_status.get(status.value, 0))
        yield jobs
        yield _histogram_family(
            "stylequeue_job_wait_seconds",
            "Time from submit to a worker's first claim, over every finished job that started.",
            [],
            [((), figures.wait)],
        )
        yield _histogram_family(
            "stylequeue_job_run_seconds",
            "Time from a job's first start to its end, over every finished job that started.",
            ["status"],
            [((status,), h) for status, h in figures.run.items()],
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
        yield from _backlog_metrics(figures.backlog)
        yield from self._queue_metrics()

    def _database_figures(self) -> DatabaseFigures:
        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] < CACHE_SECONDS:
            return self._cached[1]
        with self._svc.db.session() as session:
            figures = database_figures(session, self._histograms, utcnow())
        self._cached = (now, figures)
        return figures

    def _queue_metrics(self) -> Iterator[Metric]:
        queues = queue_figures(self._svc.redis, self._svc.settings.redis_prefix)
        up = GaugeMetricFamily("stylequeue_redis_up", "1 if the broker's Redis answered.")
        up.add_metric([], 0 if queues is None else 1)
        yield up
        if queues is None:
            return
        depth = GaugeMetricFamily(
            "stylequeue_queue_depth",
            "Messages waiting in the broker's queue (Redis LLEN, every priority).",
            labels=["queue"],
        )
        for queue, total in queues.depth.items():
            depth.add_metric([queue], total)
        yield depth
        yield GaugeMetricFamily(
            "stylequeue_queue_unacked",
            "Messages delivered to a worker and not yet acknowledged (the jobs it is running).",
            value=queues.unacked,
        )


def _backlog_metrics(backlog: Backlog) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "stylequeue_queue_oldest_age_seconds",
        "Seconds since the oldest queued job was submitted; 0 when none is queued.",
        value=backlog.oldest_queued_age_seconds,
    )
    yield GaugeMetricFamily(
        "stylequeue_backlog_seconds",
        "Estimated seconds of work: the expected run time of the queued jobs plus the"
        " remaining time of the running ones.",
        value=backlog.seconds,
    )
    yield GaugeMetricFamily(
        "stylequeue_backlog_seconds_per_worker",
        "stylequeue_backlog_seconds over the live workers; the whole backlog when none is live.",
        value=backlog.seconds_per_worker,
    )
    yield GaugeMetricFamily(
        "stylequeue_backlog_history_jobs",
        "Succeeded jobs the expected run times come from (0: a fixed guess per iteration).",
        value=backlog.history_jobs,
    )


def _histogram_family(
    name: str,
    documentation: str,
    labels: list[str],
    series: list[tuple[tuple[str, ...], Histogram]],
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=labels)
    for label_values, histogram in series:
        buckets = [
            ("+Inf" if bound == float("inf") else repr(bound), float(count))
            for bound, count in histogram.cumulative()
        ]
        family.add_metric(list(label_values), buckets, histogram.total)
    return family
