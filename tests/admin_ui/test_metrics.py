"""``GET /metrics``: parsed with prometheus_client's own parser, checked against known jobs.

Each test gets an empty database (PostgreSQL and SQLite) holding only the jobs it
wrote, with chosen timestamps, so every figure is known exactly.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from backlog_rows import add_history, add_job, add_queue, add_running, add_workers
from flask import Flask
from own_databases import own_postgresql_database
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import delete

import migrations
from api import create_app, metrics
from api.services import EXTENSION_KEY
from shared import backlog, stats
from shared.celery_app import JOBS_QUEUE
from shared.celery_wire import JobPublisher
from shared.db import Database
from shared.models import ApiClient, Job, JobEvent, JobStatus, Worker, utcnow
from shared.settings import Settings
from shared.workers import DeviceInfo, job_started, register_worker


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def module_database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, postgresql_url: str
) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('metrics') / 'metrics.sqlite3'}"
        migrations.upgrade(url)
        yield url
        return
    with own_postgresql_database(postgresql_url, f"sq_test_metrics_{secrets.token_hex(4)}") as url:
        yield url


@pytest.fixture
def fresh_database(module_database: str) -> str:
    """The module's database, emptied."""
    stats.forget_cached_counts()
    db = Database(module_database)
    try:
        with db.session() as session:
            for table in (JobEvent, Job, Worker, ApiClient):
                session.execute(delete(table))
            session.commit()
    finally:
        db.dispose()
    return module_database


@pytest.fixture
def metrics_app(
    fresh_database: str,
    redis_url: str,
    redis_prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Flask]:
    monkeypatch.setattr(metrics, "CACHE_SECONDS", 0.0)
    own = Settings(
        database_url=fresh_database,
        redis_url=redis_url,
        redis_prefix=f"{redis_prefix}metrics-{secrets.token_hex(3)}:",
        data_dir=tmp_path / "data",
    )
    app = create_app(own)
    redis = app.extensions[EXTENSION_KEY].redis
    yield app
    app.extensions[EXTENSION_KEY].db.dispose()
    keys = list(redis.scan_iter(match=f"{own.redis_prefix}*"))
    if keys:
        redis.delete(*keys)


def scrape(app: Flask, **headers: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """{sample name: {sorted labels: value}} from one scrape."""
    response = app.test_client().get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == metrics.CONTENT_TYPE
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def add_jobs(app: Flask, *, ago: timedelta = timedelta(hours=1)) -> list[uuid.UUID]:
    """Five jobs, one per status, created ``ago``, with known wait and run times; their ids."""
    now = utcnow()
    t0 = now - ago

    def job(status: JobStatus, wait: float | None, run: float | None) -> Job:
        started = None if wait is None else t0 + timedelta(seconds=wait)
        finished = None
        if run is not None and started is not None:
            finished = started + timedelta(seconds=run)
        elif status.is_finished:
            finished = t0 + timedelta(seconds=1)
        return Job(
            client_id=client.id,
            status=status,
            params={},
            n_styles=1,
            iterations=10,
            created_at=t0,
            started_at=started,
            finished_at=finished,
        )

    with app.extensions[EXTENSION_KEY].db.session() as session:
        client = ApiClient(name="metrics", key_hash=secrets.token_hex(32))
        session.add(client)
        session.flush()
        jobs = [
            job(JobStatus.SUCCEEDED, wait=3, run=50),
            job(JobStatus.FAILED, wait=0.2, run=700),
            job(JobStatus.CANCELED, wait=None, run=None),  # canceled while queued
            job(JobStatus.RUNNING, wait=40, run=None),
            job(JobStatus.QUEUED, wait=None, run=None),
        ]
        session.add_all(jobs)
        session.commit()
    stats.forget_cached_counts()  # rows that finished long ago appear: not so in production
    return [j.id for j in jobs]


def scrape_another_process(app: Flask) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """One scrape by a fresh app on the same settings (another gunicorn process)."""
    other = create_app(app.extensions[EXTENSION_KEY].settings)
    try:
        return scrape(other)
    finally:
        other.extensions[EXTENSION_KEY].db.dispose()


def test_jobs_by_status_and_wait_and_run_histograms(metrics_app: Flask) -> None:
    empty = scrape_another_process(metrics_app)
    assert empty["stylequeue_jobs"] == {(("status", s.value),): 0 for s in JobStatus}
    assert empty["stylequeue_job_wait_seconds_count"] == {(): 0}
    add_jobs(metrics_app)
    samples = scrape(metrics_app)
    assert samples["stylequeue_jobs"] == {(("status", s.value),): 1 for s in JobStatus}

    # Wait times of the finished jobs that started: 0.2 s and 3 s (the running job's
    # 40 s counts once it finishes; the job canceled while queued never started).
    wait = samples["stylequeue_job_wait_seconds_bucket"]
    assert samples["stylequeue_job_wait_seconds_count"] == {(): 2}
    assert samples["stylequeue_job_wait_seconds_sum"][()] == pytest.approx(3.2, abs=0.01)
    assert wait[(("le", "0.5"),)] == 1
    assert wait[(("le", "2.0"),)] == 1
    assert wait[(("le", "5.0"),)] == 2
    assert wait[(("le", "+Inf"),)] == 2

    run = samples["stylequeue_job_run_seconds_bucket"]
    count = samples["stylequeue_job_run_seconds_count"]
    assert count == {
        (("status", "succeeded"),): 1,
        (("status", "failed"),): 1,
        (("status", "canceled"),): 0,
    }
    assert run[(("le", "30.0"), ("status", "succeeded"))] == 0
    assert run[(("le", "60.0"), ("status", "succeeded"))] == 1
    assert run[(("le", "600.0"), ("status", "failed"))] == 0
    assert run[(("le", "1200.0"), ("status", "failed"))] == 1
    sums = samples["stylequeue_job_run_seconds_sum"]
    assert sums[(("status", "failed"),)] == pytest.approx(700, abs=0.01)


def add_finished(app: Flask, status: JobStatus, *, finished_ago: timedelta) -> None:
    """One job that waited 2 s and ran 10 s, finished ``finished_ago``."""
    finished = utcnow() - finished_ago
    with app.extensions[EXTENSION_KEY].db.session() as session:
        client = ApiClient(name="metrics", key_hash=secrets.token_hex(32))
        session.add(client)
        session.flush()
        started = finished - timedelta(seconds=10)
        session.add(
            Job(
                client_id=client.id,
                status=status,
                params={},
                n_styles=1,
                iterations=10,
                created_at=started - timedelta(seconds=2),
                started_at=started,
                finished_at=finished,
            )
        )
        session.commit()


def test_histograms_follow_new_jobs_and_count_each_run_once(metrics_app: Flask) -> None:
    """The first scrape aggregates old jobs in SQL; later ones add what finished since."""
    succeeded, failed = (("status", "succeeded"),), (("status", "failed"),)
    first_batch = add_jobs(metrics_app)  # finished most of an hour ago: the bulk aggregate
    first = scrape(metrics_app)
    assert first["stylequeue_job_run_seconds_count"][succeeded] == 1
    add_finished(metrics_app, JobStatus.SUCCEEDED, finished_ago=timedelta(seconds=30))
    second = scrape(metrics_app)
    assert second["stylequeue_job_run_seconds_count"][succeeded] == 2
    assert second["stylequeue_job_wait_seconds_count"] == {(): 3}
    # A row that commits late, with a finished_at before the latest one already counted
    # (inside the overlap), is still counted, and only once.
    add_finished(metrics_app, JobStatus.SUCCEEDED, finished_ago=timedelta(minutes=5))
    third = scrape(metrics_app)
    assert third["stylequeue_job_run_seconds_count"][succeeded] == 3
    assert third["stylequeue_job_run_seconds_bucket"][(("le", "10.0"), *succeeded)] == 2
    # Scraped again, nothing changes but the oldest queued job's age, which grows.
    again = scrape(metrics_app)
    age = "stylequeue_queue_oldest_age_seconds"
    assert again.pop(age)[()] >= third.pop(age)[()]
    assert again == third
    # The running job finishes; the failed job is retried and fails again: two new runs.
    with metrics_app.extensions[EXTENSION_KEY].db.session() as session:
        running = session.get(Job, first_batch[3])
        retried = session.get(Job, first_batch[1])
        assert running is not None and retried is not None
        running.status, running.finished_at = JobStatus.SUCCEEDED, utcnow()
        retried.finished_at = utcnow()
        session.commit()
    stats.forget_cached_counts()  # as retry_job does
    fourth = scrape(metrics_app)
    assert fourth["stylequeue_job_run_seconds_count"][succeeded] == 4
    assert fourth["stylequeue_job_run_seconds_count"][failed] == 2
    assert fourth["stylequeue_job_wait_seconds_count"] == {(): 6}
    # Another process (a fresh app, as a restarted gunicorn process) counts the same jobs,
    # except the retried job's first run: the database keeps only its latest.
    fresh = scrape_another_process(metrics_app)
    assert fresh["stylequeue_job_run_seconds_bucket"] == {
        labels: value
        for labels, value in fourth["stylequeue_job_run_seconds_bucket"].items()
        if ("status", "failed") not in labels
    } | {
        labels: value
        for labels, value in fresh["stylequeue_job_run_seconds_bucket"].items()
        if ("status", "failed") in labels
    }
    assert fresh["stylequeue_job_run_seconds_count"][failed] == 1
    assert fresh["stylequeue_job_wait_seconds_count"] == {(): 5}


def test_queue_depth_is_the_brokers_list_length(metrics_app: Flask) -> None:
    settings = metrics_app.extensions[EXTENSION_KEY].settings
    assert scrape(metrics_app)["stylequeue_queue_depth"][(("queue", JOBS_QUEUE),)] == 0
    publisher = JobPublisher(settings)
    try:
        for _ in range(3):
            publisher.publish(uuid.uuid4())
    finally:
        publisher.close()
    samples = scrape(metrics_app)
    assert samples["stylequeue_queue_depth"][(("queue", JOBS_QUEUE),)] == 3
    assert samples["stylequeue_redis_up"] == {(): 1}


def test_live_and_busy_workers_come_from_the_registry(metrics_app: Flask) -> None:
    now = utcnow()
    with metrics_app.extensions[EXTENSION_KEY].db.session() as session:
        for name, beat in (("a@h/1", now), ("b@h/2", now), ("dead@h/3", now - timedelta(hours=1))):
            register_worker(
                session, name=name, hostname="h", pid=1, device=DeviceInfo("cpu"), now=beat
            )
        session.commit()
        job_started(session, "a@h/1", uuid.uuid4())
        session.commit()
    samples = scrape(metrics_app)
    assert samples["stylequeue_workers_live"] == {(): 2}
    assert samples["stylequeue_workers_busy"] == {(): 1}


def test_redis_down_is_reported_not_a_500(metrics_app: Flask) -> None:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    svc = metrics_app.extensions[EXTENSION_KEY]
    svc.redis = redis.Redis(  # nothing listens on port 1; no retries, so the test is quick
        host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    samples = scrape(metrics_app)
    assert samples["stylequeue_redis_up"] == {(): 0}
    assert "stylequeue_queue_depth" not in samples
    assert "stylequeue_jobs" in samples


def test_the_optional_metrics_key(metrics_app: Flask) -> None:
    svc = metrics_app.extensions[EXTENSION_KEY]
    svc.settings = replace(svc.settings, metrics_key="scrape-me")
    http = metrics_app.test_client()
    assert http.get("/metrics").status_code == 401
    wrong = http.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.json["error"]["code"] == "invalid_api_key"
    assert "stylequeue_jobs" in scrape(metrics_app, Authorization="Bearer scrape-me")


def test_the_content_type_is_prometheus_text_with_one_charset(metrics_app: Flask) -> None:
    response = metrics_app.test_client().get("/metrics")
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"


def db(app: Flask) -> Database:
    database: Database = app.extensions[EXTENSION_KEY].db
    return database


def test_backlog_from_the_queue_the_running_jobs_and_recent_run_times(metrics_app: Flask) -> None:
    add_history(db(metrics_app))
    add_queue(db(metrics_app))
    add_running(db(metrics_app))
    add_workers(db(metrics_app), live=2)
    started = utcnow()
    samples = scrape(metrics_app)
    elapsed = (utcnow() - started).total_seconds()

    # Queued: 50 x 1 + 40 x 1.5 x (256/512)^2 + 10 x 8 = 145 s; running: 30 + 75 x 1 = 105 s.
    assert samples["stylequeue_backlog_seconds"][()] == pytest.approx(250)
    assert samples["stylequeue_backlog_seconds_per_worker"][()] == pytest.approx(125)
    assert samples["stylequeue_backlog_history_jobs"] == {(): 4}
    assert samples["stylequeue_workers_live"] == {(): 2}
    assert samples["stylequeue_jobs"][(("status", "queued"),)] == 3
    age = samples["stylequeue_queue_oldest_age_seconds"][()]
    assert 600 <= age <= 600 + elapsed + 1


def test_backlog_without_a_live_worker_is_the_whole_backlog(metrics_app: Flask) -> None:
    add_history(db(metrics_app))
    add_queue(db(metrics_app))
    add_workers(db(metrics_app), live=0)
    samples = scrape(metrics_app)
    assert samples["stylequeue_workers_live"] == {(): 0}
    assert samples["stylequeue_backlog_seconds"][()] == pytest.approx(145)
    assert samples["stylequeue_backlog_seconds_per_worker"][()] == pytest.approx(145)


def test_nothing_queued_or_running_is_a_zero_backlog(metrics_app: Flask) -> None:
    add_history(db(metrics_app))
    add_workers(db(metrics_app), live=1)
    samples = scrape(metrics_app)
    assert samples["stylequeue_queue_oldest_age_seconds"] == {(): 0}
    assert samples["stylequeue_backlog_seconds"] == {(): 0}
    assert samples["stylequeue_backlog_seconds_per_worker"] == {(): 0}


def test_before_any_job_succeeded_an_iteration_counts_the_fallback(metrics_app: Flask) -> None:
    add_job(db(metrics_app), JobStatus.FAILED, size=512, iterations=10, run=5000)
    add_job(db(metrics_app), JobStatus.QUEUED, size=1024, iterations=100)
    add_job(db(metrics_app), JobStatus.RUNNING, size=512, iterations=100, iteration=40)
    samples = scrape(metrics_app)
    per_iteration = backlog.FALLBACK_SECONDS_PER_ITERATION  # at 512 px; 1024 px: four times
    expected = per_iteration * 4 * 100 + per_iteration * 60
    assert samples["stylequeue_backlog_seconds"][()] == pytest.approx(expected)
    assert samples["stylequeue_backlog_history_jobs"] == {(): 0}


def test_a_queue_longer_than_the_sample_takes_the_oldest_jobs_mix(
    metrics_app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backlog, "QUEUED_SAMPLE", 2)
    add_history(db(metrics_app))
    add_queue(db(metrics_app))
    samples = scrape(metrics_app)
    # The two oldest: 50 x 1 + 40 x 0.375 = 65 s for two of the three queued jobs.
    assert samples["stylequeue_backlog_seconds"][()] == pytest.approx(65 * 3 / 2)
    assert 600 <= samples["stylequeue_queue_oldest_age_seconds"][()] < 660


def test_the_openapi_spec_documents_metrics_as_it_answers(metrics_app: Flask) -> None:
    http = metrics_app.test_client()
    operation = http.get("/openapi.json").json["paths"]["/metrics"]["get"]
    answer = http.get("/metrics")
    assert list(operation["responses"]["200"]["content"]) == [answer.headers["Content-Type"]]
    # Open by default, the metrics key when one is set: either is allowed, and a 401 is listed.
    assert operation["security"] == [{}, {"metricsKey": []}]
    svc = metrics_app.extensions[EXTENSION_KEY]
    svc.settings = replace(svc.settings, metrics_key="scrape-me")
    refused = http.get("/metrics")
    assert str(refused.status_code) in operation["responses"]
    assert refused.mimetype in operation["responses"]["401"]["content"]
