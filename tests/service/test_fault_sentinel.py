"""Fault: the Redis primary killed under a stream of jobs, with Redis Sentinel promoting
its replica. Every accepted job succeeds, none runs twice, and the same two worker
processes take jobs before and after the failover.

Everything is started by the test, each process with the sentinel:// URL: a primary, a
replica and three sentinels (``redis_sentinel.SentinelGroup``, on free loopback ports),
the real API (``stylequeue api``), two real ``celery worker`` process groups (one quiet,
one with gossip, mingle and heartbeats as ``stylequeue worker`` runs) and the real
``stylequeue scheduler``, on a database of the module's own. Replication is asynchronous,
so a message pushed just before the kill may be missing on the new primary, and a submit
while no primary answers leaves its job queued: the reconciler re-sends queued jobs
untouched for REQUEUE_AFTER_SECONDS, and the database decides who runs what.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import service_helpers
from fault_helpers import WorkerProcess, fault_report, log_lines
from lease_cluster import LeaseCluster, cluster_env
from own_databases import own_postgresql_database
from processes import required
from redis_sentinel import REDIS_SERVER, SentinelGroup
from sqlalchemy import func, select

from shared.db import Database
from shared.models import Job, JobEvent, JobStatus, utcnow

pytestmark = pytest.mark.slow

MASTER = "stylequeue-test"
SIZE = 32
ITERATIONS = 20  # at 32 px: under a second of work each on a quiet machine
IN_FLIGHT = 4  # unfinished jobs the stream keeps: one running on each worker, two queued
BEFORE = 4  # jobs finished before the kill
AFTER = 4  # jobs claimed after the promotion
REQUEUE_AFTER_SECONDS = 3  # a queued job whose message went missing waits this long
WAIT_SECONDS = 90.0
SCHEDULER_READY_MARKERS = ("beat: Starting", "ready.")
FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)
DATA = Path(__file__).parent.parent / "data"


def wait_for(what: str, found: Callable[[], Any], timeout: float = WAIT_SECONDS) -> Any:
    return service_helpers.wait_for(what, found, timeout=timeout, interval=0.05)


class JobStream:
    """Submits tiny jobs over HTTP from a thread, keeping IN_FLIGHT of them unfinished."""

    def __init__(self, base_url: str, headers: dict[str, str], db: Database) -> None:
        self.base_url = base_url
        self.headers = headers
        self.db = db
        self._accepted: dict[uuid.UUID, float] = {}  # job id -> time.monotonic() of its 202
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="job-stream", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self) -> uuid.UUID:
        files = [
            ("content", ("content.png", (DATA / "tubingen.png").read_bytes(), "image/png")),
            ("style", ("style.png", (DATA / "starry_night.png").read_bytes(), "image/png")),
        ]
        params = f'{{"size": {SIZE}, "iterations": {ITERATIONS}, "scales": 1}}'
        response = httpx.post(
            f"{self.base_url}/v1/jobs",
            files=files,
            # Computed, never a copy of an earlier job: the workers are what is tested.
            data={"params": params, "cache": "false"},
            headers=self.headers,
            timeout=30.0,
        )
        assert response.status_code == 202, response.text
        job_id = uuid.UUID(response.json()["id"])
        with self._lock:
            self._accepted[job_id] = time.monotonic()
        return job_id

    def ids(self, *, accepted_after: float = 0.0) -> list[uuid.UUID]:
        with self._lock:
            return [job_id for job_id, at in self._accepted.items() if at > accepted_after]

    def statuses(self) -> dict[uuid.UUID, JobStatus]:
        with self.db.session() as session:
            rows = session.execute(select(Job.id, Job.status).where(Job.id.in_(self.ids())))
            return {job_id: status for job_id, status in rows}

    def _unfinished(self) -> int:
        return sum(status not in FINISHED for status in self.statuses().values())

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self._unfinished() < IN_FLIGHT:
                    self.submit()
                else:
                    self._stop.wait(0.05)
        except BaseException as exc:  # reported by stop(), in the test's thread
            self._error = exc

    def check(self) -> None:
        if self._error is not None:
            raise AssertionError(f"the job stream stopped: {self._error!r}") from self._error

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        self.check()


def claims(db: Database, ids: list[uuid.UUID]) -> list[JobEvent]:
    with db.session() as session:
        query = select(JobEvent).where(JobEvent.job_id.in_(ids), JobEvent.kind == "claimed")
        return list(session.scalars(query.order_by(JobEvent.id)))


def events_since(db: Database, ids: list[uuid.UUID], kind: str, since: datetime) -> int:
    with db.session() as session:
        query = select(func.count(JobEvent.id)).where(
            JobEvent.job_id.in_(ids), JobEvent.kind == kind, JobEvent.at >= since
        )
        return int(session.scalar(query) or 0)


@pytest.fixture(scope="module")
def own_database(postgresql_url: str) -> Iterator[str]:
    """A database of this module's own (the reconciler re-sends every stale job it finds)."""
    name = postgresql_url.rsplit("/", 1)[1]
    with own_postgresql_database(postgresql_url, f"{name}_sentinel_fault") as url:
        yield url


@pytest.fixture
def group(tmp_path: Path) -> Iterator[SentinelGroup]:
    if not os.access(REDIS_SERVER, os.X_OK):
        required("redis-server is needed (apt-get install redis-server)")
    started = SentinelGroup(tmp_path / "redis", MASTER)
    yield started
    started.stop()


@pytest.fixture
def cluster(
    group: SentinelGroup, own_database: str, redis_prefix: str, tmp_path: Path
) -> Iterator[LeaseCluster]:
    env = cluster_env(
        "sentinel",
        postgresql_url=own_database,
        redis_url=group.url,
        redis_prefix=redis_prefix,
        data_dir=tmp_path / "data",
    )
    env.update(
        {
            "STYLEQUEUE_REDIS_SENTINEL_MASTER": MASTER,
            # Long enough that no attempt expires on two busy cores: a second claim of a
            # job here could only come from a lost or repeated message.
            "STYLEQUEUE_LEASE_SECONDS": "30",
            "STYLEQUEUE_CHECKPOINT_SECONDS": "2",
            "STYLEQUEUE_PREVIEW_SECONDS": "1",
            "STYLEQUEUE_RECONCILE_SECONDS": "1",
            "STYLEQUEUE_REQUEUE_AFTER_SECONDS": str(REQUEUE_AFTER_SECONDS),
        }
    )
    started = LeaseCluster(env, tmp_path)
    try:
        with ThreadPoolExecutor(3) as pool:  # each takes seconds to start: side by side
            quiet = pool.submit(WorkerProcess, env, tmp_path / "quiet.log", "quiet")
            production = pool.submit(
                WorkerProcess, env, tmp_path / "production.log", "production", quiet=False
            )
            api = pool.submit(started.start_api)
            failures = []
            for future in (quiet, production):  # each started one is stopped by close()
                try:
                    started.workers.append(future.result())
                except BaseException as exc:  # noqa: BLE001 - raised below, after the others
                    failures.append(exc)
            api.result()
            if failures:
                raise failures[0]
        yield started
    finally:
        started.close()


def logs(cluster: LeaseCluster, group: SentinelGroup) -> str:
    parts = [f"--- {w.name}\n{w.log()[-3000:]}" for w in cluster.workers]
    parts.append(f"--- scheduler\n{(cluster.log_dir / 'scheduler.log').read_text()[-3000:]}")
    if cluster.api is not None:
        parts.append(f"--- api\n{cluster.api.log()[-3000:]}")
    return "\n".join(parts) + "\n" + group.logs()


def reconnected_after(worker: WorkerProcess, moment: datetime) -> float | None:
    """Seconds from ``moment`` to the worker's first "Connected to" log line after it."""
    for line in log_lines(worker.log()):
        if not str(line.get("message", "")).startswith("Connected to"):
            continue
        at = datetime.fromisoformat(line["time"])
        if at > moment:
            return (at - moment).total_seconds()
    return None


def ready(api_url: str) -> bool:
    response = httpx.get(f"{api_url}/readyz", timeout=10.0)
    return response.status_code == 200


def redis_up_in_metrics(api_url: str) -> bool:
    text = httpx.get(f"{api_url}/metrics", timeout=10.0).text
    return "\nstylequeue_redis_up 1.0\n" in text


def test_a_sentinel_failover_under_a_stream_of_jobs_loses_nothing_and_runs_nothing_twice(
    group: SentinelGroup, cluster: LeaseCluster
) -> None:
    assert cluster.api is not None
    api_url = cluster.api.base_url
    wait_for("the API to be ready (Redis through the sentinels)", lambda: ready(api_url))
    scheduler_log = cluster.log_dir / "scheduler.log"
    wait_for(
        "the scheduler to be ready",
        lambda: all(
            m in scheduler_log.read_text(errors="replace") for m in SCHEDULER_READY_MARKERS
        ),
    )
    stream = JobStream(api_url, cluster.headers, cluster.db)
    stream.start()
    try:

        def both_workers_done_enough() -> set[str] | None:
            stream.check()
            done = [i for i, s in stream.statuses().items() if s is JobStatus.SUCCEEDED]
            names = {c.worker for c in claims(cluster.db, done) if c.worker}
            return names if len(done) >= BEFORE and len(names) == 2 else None

        workers: set[str] = wait_for(
            f"{BEFORE} jobs done, on both workers", both_workers_done_enough
        )
        killed_at = utcnow()
        killed = group.kill_primary()
        during = stream.submit()  # while no primary answers, or just after
        during_seconds = time.monotonic() - killed
        promoted = group.wait_promoted()
        promoted_at = utcnow()
        failover_seconds = promoted - killed
        wait_for("/readyz to answer 200 again", lambda: ready(api_url))
        wait_for("/metrics to read the queues again", lambda: redis_up_in_metrics(api_url))

        def both_workers_took_enough_after() -> set[str] | None:
            stream.check()
            later = [c for c in claims(cluster.db, stream.ids()) if c.at > promoted_at]
            names = {c.worker for c in later if c.worker}
            return names if len(later) >= AFTER and len(names) == 2 else None

        after = wait_for(
            f"{AFTER} jobs claimed after the promotion, on both workers",
            both_workers_took_enough_after,
        )
    except BaseException:
        print(logs(cluster, group))
        raise
    finally:
        stream.stop()
    ids = stream.ids()
    assert during in ids

    def all_finished() -> bool:
        return all(s in FINISHED for s in stream.statuses().values())

    try:
        wait_for(f"all {len(ids)} accepted jobs to finish", all_finished)
    except BaseException:
        print(stream.statuses(), logs(cluster, group))
        raise
    all_claims = claims(cluster.db, ids)
    accepted_after_kill = set(stream.ids(accepted_after=killed))
    first_after = min(c.at for c in all_claims if c.job_id in accepted_after_kill)
    report = fault_report(cluster.db, ids)
    lost = report.submitted - report.completed
    print(report.line("sentinel-failover") + f" lost={lost}")
    reconnects = [reconnected_after(w, killed_at) for w in cluster.workers]
    print(
        f"sentinel failover: primary SIGKILLed after {BEFORE} jobs; every sentinel named the "
        f"replica {failover_seconds:.2f} s later; the workers connected to it "
        + ", ".join("never" if r is None else f"{r:.2f}" for r in reconnects)
        + " s after the kill; the first job accepted after the kill was "
        f"claimed {(first_after - killed_at).total_seconds():.2f} s after it; the submit right "
        f"after the kill answered 202 in {during_seconds:.2f} s; after the kill "
        f"{events_since(cluster.db, ids, 'enqueue_failed', killed_at)} enqueue_failed, "
        f"{events_since(cluster.db, ids, 'requeued', killed_at)} requeued by the reconciler"
    )
    # Nothing lost: every accepted job succeeded.
    assert report.completed == report.submitted == len(ids), stream.statuses()
    # Nothing run twice: one claim per job, no two attempts alive at once.
    assert report.run_twice == 0
    assert sorted(c.job_id for c in all_claims) == sorted(ids)
    # The same two worker processes before and after, both alive.
    assert after == workers
    assert {c.worker for c in all_claims} == workers
    assert None not in reconnects  # each worker reconnected (rather than a new process)
    for worker in cluster.workers:
        assert worker.process.poll() is None, f"worker {worker.name} exited\n{worker.log()}"
    assert cluster.scheduler.poll() is None, "the scheduler exited"
