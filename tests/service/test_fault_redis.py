"""Faults: Redis restarted (everything in it lost), and Redis flushed, with jobs queued
and running. Every accepted job still completes, each on one worker, and the same worker
processes go on consuming afterwards (the celery#8030 trap: workers that stop after a reconnect).

The test starts everything itself: its own ``redis-server`` (no persistence, so a restart
loses every message, like a crash of a cache-configured Redis), two real ``celery worker``
process groups and a real ``stylequeue scheduler`` (beat + the reconciler), on a database of
its own on the test run's PostgreSQL server: the reconciler re-enqueues every stale job it
finds, and the session's shared database holds other tests' queued jobs.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis
import service_helpers
from fault_helpers import WorkerProcess, fault_report
from flask.testing import FlaskClient
from own_databases import own_postgresql_database
from processes import free_port, required, stop_process_group
from sqlalchemy import select

from api import create_app
from api.services import EXTENSION_KEY
from cli.server_cmds import scheduler_argv
from shared.auth import create_client
from shared.celery_app import (
    BROKER_MARKER_KEY,
    broker_lost_its_keys,
    create_celery,
    forget_broker_marker,
)
from shared.db import Database
from shared.models import Job, JobEvent, JobStatus, utcnow
from shared.settings import Settings

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"  # Debian's
ITERATIONS = 100  # at 32 px: a second or two per job on a quiet machine, more on a busy one
JOBS_PER_CASE = 6  # two running, four queued when the fault comes
WAIT_SECONDS = 120.0
SCHEDULER_READY_MARKERS = ("beat: Starting", "ready.")


def wait_for(what: str, found: Callable[[], Any], timeout: float = WAIT_SECONDS) -> Any:
    return service_helpers.wait_for(what, found, timeout=timeout, interval=0.1)


class RedisServer:
    """A ``redis-server`` of the test's own on a free port: nothing saved, nothing evicted."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.client = redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=2)
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        argv = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "no",
            "--maxmemory-policy", "noeviction",
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(argv, start_new_session=True)
        wait_for(f"redis-server on port {self.port}", self._answers, timeout=15)

    def _answers(self) -> bool:
        assert self.process is not None and self.process.poll() is None, "redis-server exited"
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        """SIGKILL: a crash, everything in memory lost."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=15)

    def stop(self) -> None:
        self.client.close()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Stack:
    redis: RedisServer
    workers: list[WorkerProcess]
    scheduler: subprocess.Popen[bytes]
    scheduler_log: Path
    http: FlaskClient
    auth: dict[str, str]
    db: Database
    # The pool processes: (their worker's node name, their pid), as the claims record them.
    pool_processes: set[tuple[str, int]]

    def submit(self, n: int) -> list[uuid.UUID]:
        return [uuid.UUID(self.post().json["id"]) for _ in range(n)]

    def post(self) -> Any:
        data = {
            "content": (io.BytesIO(_image("tubingen")), "content.png"),
            "style": [(io.BytesIO(_image("starry_night")), "style.png")],
            "params": json.dumps({"size": 32, "iterations": ITERATIONS, "scales": 1}),
            "cache": "false",  # computed, never a copy: the workers are what is tested
        }
        response = self.http.post(
            "/v1/jobs", data=data, headers=self.auth, content_type="multipart/form-data"
        )
        assert response.status_code == 202, response.get_data(as_text=True)
        return response

    def statuses(self, ids: list[uuid.UUID]) -> dict[uuid.UUID, JobStatus]:
        with self.db.session() as session:
            rows = session.execute(select(Job.id, Job.status).where(Job.id.in_(ids)))
            return {job_id: status for job_id, status in rows}

    def claims(self, ids: list[uuid.UUID]) -> list[JobEvent]:
        with self.db.session() as session:
            query = select(JobEvent).where(JobEvent.job_id.in_(ids), JobEvent.kind == "claimed")
            return list(session.scalars(query.order_by(JobEvent.id)))

    def wait_all_succeeded(self, ids: list[uuid.UUID]) -> None:
        def done() -> bool:
            statuses = self.statuses(ids)
            bad = {i: s for i, s in statuses.items() if s in (JobStatus.FAILED, JobStatus.CANCELED)}
            assert not bad, f"jobs ended badly: {bad}\n{self.logs()}"
            return all(s is JobStatus.SUCCEEDED for s in statuses.values())

        try:
            wait_for(f"{len(ids)} jobs to succeed", done)
        except BaseException:
            print(self.statuses(ids), self.logs())
            raise
        for job_id in ids:
            result = self.http.get(f"/v1/jobs/{job_id}/result", headers=self.auth)
            assert result.status_code == 200 and result.mimetype == "image/png"
            assert result.data.startswith(b"\x89PNG")

    def assert_processes_alive(self) -> None:
        for worker in self.workers:
            assert worker.process.poll() is None, f"worker {worker.name} exited\n{worker.log()}"
        assert self.scheduler.poll() is None, f"scheduler exited\n{self.scheduler_log_text()}"

    def scheduler_log_text(self) -> str:
        return self.scheduler_log.read_text(errors="replace")

    def logs(self) -> str:
        parts = [f"--- {w.name}\n{w.log()[-3000:]}" for w in self.workers]
        parts.append(f"--- scheduler\n{self.scheduler_log_text()[-3000:]}")
        return "\n".join(parts)


_DATA = Path(__file__).parent.parent / "data"


def _image(name: str) -> bytes:
    return (_DATA / f"{name}.png").read_bytes()


@pytest.fixture(scope="module")
def own_database(postgresql_url: str) -> Iterator[str]:
    """A database of this module's own beside the run's, on the same server; dropped after."""
    name = postgresql_url.rsplit("/", 1)[1]
    with own_postgresql_database(postgresql_url, f"{name}_redis_fault") as url:
        yield url


@pytest.fixture(scope="module")
def stack(own_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not os.access(REDIS_SERVER, os.X_OK):
        required("redis-server is needed (apt-get install redis-server)")
    root = tmp_path_factory.mktemp("redis-fault")
    server = RedisServer(root)
    env = {
        "STYLEQUEUE_DATABASE_URL": own_database,
        "STYLEQUEUE_REDIS_URL": server.url,
        "STYLEQUEUE_REDIS_PREFIX": "sq_redis_fault:",
        "STYLEQUEUE_DATA_DIR": str(root / "data"),
        "STYLEQUEUE_DEVICE": "cpu",
        "STYLEQUEUE_HEARTBEAT_SECONDS": "0.2",
        "STYLEQUEUE_CHECKPOINT_SECONDS": "1",
        "STYLEQUEUE_LEASE_SECONDS": "30",
        "STYLEQUEUE_RECONCILE_SECONDS": "1",
        # Far beyond the test: the lost messages must come back through the reconciler's
        # marker (Redis lost its keys: re-send every queued job at once), not this delay.
        "STYLEQUEUE_REQUEUE_AFTER_SECONDS": "3600",
        # One thread per worker: two workers on two busy cores, not four spinning threads.
        "OMP_NUM_THREADS": "1",
    }
    settings = Settings.from_env(env)
    settings.data_dir.mkdir(parents=True)
    workers: list[WorkerProcess] = []
    scheduler: subprocess.Popen[bytes] | None = None
    db = Database(settings.database_url)
    app = create_app(settings)
    app.config["TESTING"] = True
    try:
        scheduler_log = root / "scheduler.log"
        with scheduler_log.open("wb") as log:
            scheduler = subprocess.Popen(
                scheduler_argv(settings),
                env={**os.environ, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # One worker as the tests usually start them, one as `stylequeue worker` runs
        # (gossip, mingle and heartbeats, whose reconnects are Celery's other trap).
        workers.append(WorkerProcess(env, root / "quiet.log", "quiet"))
        workers.append(WorkerProcess(env, root / "production.log", "production", quiet=False))

        def scheduler_ready() -> bool:
            assert scheduler is not None and scheduler.poll() is None, "the scheduler exited"
            text = scheduler_log.read_text(errors="replace")
            return all(marker in text for marker in SCHEDULER_READY_MARKERS)

        wait_for("the scheduler to be ready", scheduler_ready)
        with db.session() as session:
            _, key = create_client(session, "redis-fault")
        yield Stack(
            redis=server,
            workers=workers,
            scheduler=scheduler,
            scheduler_log=scheduler_log,
            http=app.test_client(),
            auth={"Authorization": f"Bearer {key}"},
            db=db,
            pool_processes=set(),
        )
    finally:
        for worker in workers:
            worker.stop()
        if scheduler is not None:
            stop_process_group(scheduler)
        app.extensions[EXTENSION_KEY].db.dispose()
        app.extensions[EXTENSION_KEY].publisher.close()
        app.extensions[EXTENSION_KEY].celery.close()
        db.dispose()
        server.stop()


def _pool_process(claim: JobEvent) -> tuple[str, int]:
    """The pool process that made a claim: its worker's node name and its pid."""
    assert claim.worker is not None
    return claim.worker, int(claim.data["pid"])


def _running_on_both_workers(stack: Stack, ids: list[uuid.UUID]) -> set[tuple[str, int]]:
    """Wait until two jobs are running (so one on each worker, the rest queued)."""

    def two_running() -> set[tuple[str, int]] | None:
        with stack.db.session() as session:
            query = select(Job.id).where(Job.id.in_(ids), Job.status == JobStatus.RUNNING)
            running = list(session.scalars(query))
        latest = {claim.job_id: claim for claim in stack.claims(running)}  # the last claim each
        processes = {_pool_process(claim) for claim in latest.values()}
        return processes if len(processes) == 2 else None

    processes: set[tuple[str, int]] = wait_for("a job running on each worker", two_running)
    if stack.pool_processes:
        assert processes == stack.pool_processes  # still the same two pool processes
    stack.pool_processes.update(processes)
    return processes


def _outage_checks(stack: Stack) -> uuid.UUID:
    """While Redis is down: /readyz says so, and a submit is still accepted (left queued)."""
    ready = stack.http.get("/readyz")
    assert ready.status_code == 503, ready.get_data(as_text=True)
    error = ready.json["error"]
    assert error["code"] == "service_unavailable" and "redis" in error["message"]
    assert error["details"]["redis"] == "unavailable" and error["details"]["database"] == "ok"
    started = time.monotonic()
    response = stack.post()
    elapsed = time.monotonic() - started
    assert elapsed < 10  # the submit does not hang on the dead Redis
    print(
        f"during the outage: POST /v1/jobs {response.status_code} in {elapsed * 1000:.0f} ms; "
        f"/readyz {ready.status_code} {error['message']!r}"
    )
    job_id = uuid.UUID(response.json["id"])
    assert response.json["status"] == "queued"
    with stack.db.session() as session:
        kinds = session.scalars(select(JobEvent.kind).where(JobEvent.job_id == job_id))
        assert "enqueue_failed" in set(kinds)
    return job_id


def _check_and_report(
    stack: Stack,
    name: str,
    ids: list[uuid.UUID],
    *,
    at_fault: dict[JobStatus, int],
    fault_at: datetime,
    back_at: datetime,
) -> None:
    stack.wait_all_succeeded(ids)
    done_at = utcnow()
    stack.assert_processes_alive()
    # Our explicit choice silences Celery's reminder, printed at every reconnect otherwise.
    for text in [w.log() for w in stack.workers] + [stack.scheduler_log_text()]:
        assert "worker_cancel_long_running" not in text
    claims = stack.claims(ids)
    # Each job claimed once (nothing re-run), and only by the two original pool processes.
    assert sorted(c.job_id for c in claims) == sorted(ids), [(c.job_id, c.attempt) for c in claims]
    assert {_pool_process(c) for c in claims} <= stack.pool_processes
    # Both workers took jobs after the fault: neither stopped consuming on reconnect.
    after = {_pool_process(c) for c in claims if c.at > fault_at}
    assert after == stack.pool_processes, (after, stack.pool_processes, stack.logs())

    # Jobs submitted after the recovery: one on each original worker at once.
    later = stack.submit(2)
    stack.wait_all_succeeded(later)
    later_claims = stack.claims(later)
    assert {_pool_process(c) for c in later_claims} == stack.pool_processes, stack.logs()
    assert len(later_claims) == 2

    with stack.db.session() as session:
        query = select(JobEvent.at).where(
            JobEvent.job_id.in_(ids), JobEvent.kind == "requeued", JobEvent.at > back_at
        )
        resent = sorted(session.scalars(query))
    assert resent, "the reconciler re-sent nothing"
    print(
        f"{name}: at the fault {at_fault.get(JobStatus.RUNNING, 0)} running, "
        f"{at_fault.get(JobStatus.QUEUED, 0)} queued, "
        f"{at_fault.get(JobStatus.SUCCEEDED, 0)} succeeded; Redis back "
        f"{(back_at - fault_at).total_seconds():.1f} s after the fault; first re-send "
        f"{(resent[0] - back_at).total_seconds():.1f} s later ({len(resent)} re-sends); "
        f"all {len(ids)} done {(done_at - back_at).total_seconds():.1f} s after Redis was back"
    )
    report = fault_report(stack.db, ids + later)
    print(report.line(name))
    assert report.completed == report.submitted == len(ids) + 2
    assert report.run_twice == 0
    assert report.attempts == report.submitted
    assert report.iterations_redone == 0


@pytest.mark.slow
def test_redis_restart_loses_nothing_and_the_same_workers_keep_consuming(stack: Stack) -> None:
    ids = stack.submit(JOBS_PER_CASE)
    _running_on_both_workers(stack, ids)
    at_fault = _counts(stack, ids)
    running = [i for i, status in stack.statuses(ids).items() if status is JobStatus.RUNNING]
    fault_at = utcnow()
    stack.redis.kill()
    during = _outage_checks(stack)
    # Down until a running job has finished: its worker acknowledges the message on a
    # dead connection, then waits with nothing to do, past Celery's first retries.
    wait_for(
        "a running job to finish while Redis is down",
        lambda: JobStatus.SUCCEEDED in stack.statuses(running).values(),
    )
    stack.redis.start()
    back_at = utcnow()
    assert stack.redis.client.dbsize() == 0  # everything the broker held is gone
    assert stack.http.get("/readyz").status_code == 200
    _check_and_report(
        stack,
        "redis-restart",
        [*ids, during],
        at_fault=at_fault,
        fault_at=fault_at,
        back_at=back_at,
    )


def _counts(stack: Stack, ids: list[uuid.UUID]) -> dict[JobStatus, int]:
    statuses = list(stack.statuses(ids).values())
    return {status: statuses.count(status) for status in set(statuses)}


@pytest.mark.slow
def test_redis_flushall_loses_nothing_and_the_same_workers_keep_consuming(stack: Stack) -> None:
    ids = stack.submit(JOBS_PER_CASE)
    _running_on_both_workers(stack, ids)
    at_fault = _counts(stack, ids)
    fault_at = utcnow()
    stack.redis.client.flushall()
    assert stack.redis.client.dbsize() == 0
    _check_and_report(
        stack, "redis-flush", ids, at_fault=at_fault, fault_at=fault_at, back_at=fault_at
    )


def test_the_marker_tells_the_reconciler_when_redis_lost_its_keys(
    redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'unused.sqlite3'}",
        redis_url=redis_url,
        redis_prefix=f"{redis_prefix}marker:",
    )
    assert broker_lost_its_keys(settings)  # a Redis new to this deployment
    assert not broker_lost_its_keys(settings)  # nothing lost since
    assert not broker_lost_its_keys(settings)
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.ttl(f"{settings.redis_prefix}{BROKER_MARKER_KEY}") == -1  # never expires
        client.delete(f"{settings.redis_prefix}{BROKER_MARKER_KEY}")  # as a flush would
    finally:
        client.close()
    assert broker_lost_its_keys(settings)
    forget_broker_marker(settings)  # a re-send that did not finish: the next run redoes it
    assert broker_lost_its_keys(settings)


def test_the_broker_settings_ride_out_redis_outages(tmp_path: Path) -> None:
    conf = create_celery(Settings(database_url=f"sqlite:///{tmp_path / 'unused.sqlite3'}")).conf
    assert conf.broker_connection_retry is True
    assert conf.broker_connection_max_retries is None  # never give up reconnecting
    assert conf.worker_cancel_long_running_tasks_on_connection_loss is False
    options = conf.broker_transport_options
    assert options["socket_keepalive"] is True
    assert options["socket_timeout"] > 1  # above kombu's BRPOP timeout
    assert options["health_check_interval"] > 0
