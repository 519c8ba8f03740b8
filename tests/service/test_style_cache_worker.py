"""A worker keeps recently used styles' Gram targets: with real ``celery worker`` processes,
PostgreSQL and Redis, a second job with the same style takes its targets from the cache (its
``succeeded`` event says so) and its result is byte for byte the one a worker with the cache
off makes; another style or another style_scale misses; the size limit evicts."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from celery import Celery
from fault_helpers import WorkerProcess, job_log_events
from service_helpers import DATA, wait_for
from sqlalchemy import select

from shared import submissions
from shared.auth import create_client
from shared.celery_app import create_celery, enqueue_job
from shared.db import Database
from shared.models import Job, JobEvent, JobStatus
from shared.params import parse_params
from shared.settings import Settings
from shared.storage import Storage, open_storage

pytestmark = pytest.mark.slow

JOB_SECONDS = 120.0
PARAMS = {"size": 64, "iterations": 3, "scales": 1}  # one pass: one style entry per job
# One style's Gram matrices are ~2.3 MiB: the cached worker keeps exactly one.
ONE_ENTRY_MB = 3


@dataclass
class Worker:
    process: WorkerProcess
    celery: Celery


@dataclass
class Stack:
    db: Database
    storage: Storage
    client_id: int
    cached: Worker
    uncached: Worker

    def run(self, worker: Worker, style: str, **params: Any) -> uuid.UUID:
        """Submit tubingen in the style of ``style`` to ``worker`` only; wait for its success."""
        with self.db.session() as session:
            job, _ = submissions.create_job(
                session,
                self.storage,
                client_id=self.client_id,
                params=parse_params({**PARAMS, **params}),
                content=(DATA / "tubingen.png").read_bytes(),
                styles=[(DATA / f"{style}.png").read_bytes()],
                idempotency_key=None,
                enqueue=lambda job_id: enqueue_job(worker.celery, job_id),
            )
        wait_for(f"job {job.id} to finish", lambda: self._finished(job.id), timeout=JOB_SECONDS)
        row = self._row(job.id)
        assert row.status is JobStatus.SUCCEEDED, (row.status, row.error_message)
        return job.id

    def targets(self, job_id: uuid.UUID) -> tuple[int, int]:
        """(from the cache, computed), as the job's succeeded event records them."""
        with self.db.session() as session:
            event = session.scalars(
                select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == "succeeded")
            ).one()
            return event.data["style_targets_cached"], event.data["style_targets_computed"]

    def result(self, job_id: uuid.UUID) -> bytes:
        name = self._row(job_id).result_file
        assert name is not None
        return self.storage.get(job_id, name)

    def _row(self, job_id: uuid.UUID) -> Job:
        with self.db.session() as session:
            row = session.get(Job, job_id)
            assert row is not None
            return row

    def _finished(self, job_id: uuid.UUID) -> bool:
        return self._row(job_id).status not in (JobStatus.QUEUED, JobStatus.RUNNING)


@pytest.fixture(scope="module")
def stack(
    postgresql_url: str, redis_url: str, redis_prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("style-cache")

    def env(name: str, cache_mb: int) -> dict[str, str]:
        return {
            "STYLEQUEUE_DATABASE_URL": postgresql_url,
            "STYLEQUEUE_REDIS_URL": redis_url,
            # A key space (so a queue) each: a job goes to the worker the test chose.
            "STYLEQUEUE_REDIS_PREFIX": f"{redis_prefix}style-cache-{name}:",
            "STYLEQUEUE_DATA_DIR": str(tmp / "data"),
            "STYLEQUEUE_DEVICE": "cpu",
            "STYLEQUEUE_HEARTBEAT_SECONDS": "0.2",
            "STYLEQUEUE_LOG_FORMAT": "json",
            "STYLEQUEUE_STYLE_CACHE_MB": str(cache_mb),
        }

    envs = {"cached": env("cached", ONE_ENTRY_MB), "uncached": env("uncached", 0)}
    started: list[WorkerProcess] = []

    def start(name: str) -> WorkerProcess:
        process = WorkerProcess(envs[name], tmp / f"{name}.log", f"style-cache-{name}")
        started.append(process)
        return process

    db = Database(postgresql_url)
    try:
        with ThreadPoolExecutor(2) as pool:
            cached, uncached = pool.map(start, ["cached", "uncached"])
        settings = Settings.from_env(envs["cached"])
        with db.session() as session:
            client, _ = create_client(session, f"style-cache-{uuid.uuid4().hex[:8]}")
        yield Stack(
            db,
            open_storage(settings),
            client.id,
            Worker(cached, create_celery(settings)),
            Worker(uncached, create_celery(Settings.from_env(envs["uncached"]))),
        )
    finally:
        for process in started:
            process.stop()
        db.dispose()


def test_the_second_job_with_a_style_takes_its_targets_from_the_cache(stack: Stack) -> None:
    first = stack.run(stack.cached, "starry_night")
    second = stack.run(stack.cached, "starry_night")
    off = stack.run(stack.uncached, "starry_night")
    assert stack.targets(first) == (0, 1)
    assert stack.targets(second) == (1, 0)
    assert stack.targets(off) == (0, 1), "STYLEQUEUE_STYLE_CACHE_MB=0: no cache"
    assert stack.result(second) == stack.result(off), "the cache must not change the result"
    assert stack.result(second) == stack.result(first)

    # Another style misses, and with room for one entry it evicts the first style's.
    other = stack.run(stack.cached, "shipwreck")
    assert stack.targets(other) == (0, 1)
    again = stack.run(stack.cached, "starry_night")
    assert stack.targets(again) == (0, 1), "evicted by the size limit"
    # The first style is cached again: another style_scale (another size) still misses.
    scaled = stack.run(stack.cached, "starry_night", style_scale=2.0)
    assert stack.targets(scaled) == (0, 1)

    # The worker's counters of its cache, in the line it logs after each job.
    line = wait_for(
        "the style cache's log line",
        lambda: job_log_events(stack.cached.process.log(), scaled, "style_cache"),
        timeout=10.0,
    )[-1]
    assert line["style_targets_cached"] == 0 and line["style_targets_computed"] == 1
    assert (line["style_cache_hits"], line["style_cache_misses"]) == (1, 4)
    assert line["style_cache_evictions"] == 3 and line["style_cache_entries"] == 1
    assert line["style_cache_max_bytes"] == ONE_ENTRY_MB * 1024 * 1024
