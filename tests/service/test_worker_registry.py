"""The worker side of the workers registry: registration, the beating thread, a database
that goes away (best effort: never an exception into the job)."""

from __future__ import annotations

import socket
import time
import uuid
from datetime import UTC, datetime

import pytest
import torch
from service_helpers import wait_for

from shared import admin_reads
from shared.db import Database
from shared.models import Worker
from shared.workers import worker_name
from worker.registry import WorkerRegistry, describe_device


def test_describe_device_on_the_cpu() -> None:
    info = describe_device(torch.device("cpu"))
    assert (info.device, info.name, info.memory_bytes) == ("cpu", None, None)


def test_the_registry_registers_beats_and_stops(database_url: str) -> None:
    db = Database(database_url)
    # A pid no process has (Linux's pid_max is at most 2**22), and one of this run's own.
    pid = 2**30 + uuid.uuid4().int % 2**20
    registry = WorkerRegistry(
        db, socket.gethostname(), pid, lambda: torch.device("cpu"), beat_seconds=0.05
    )
    name = registry.name
    assert name == worker_name(socket.gethostname(), pid)
    try:
        registry.start()
        registry.start()  # idempotent: one row, one thread

        def row() -> Worker | None:
            with db.session() as session:
                return session.get(Worker, name)

        first = row()
        assert first is not None and first.hostname == socket.gethostname()
        assert first.pid == pid
        assert first.device == "cpu" and first.jobs_done == 0
        wait_for(
            "a beat",
            lambda: (r := row()) is not None and r.last_heartbeat_at > first.last_heartbeat_at,
            timeout=10,
        )
        job = uuid.uuid4()
        registry.job_started(job)
        started = row()
        assert started is not None and started.current_job_id == job
        registry.job_ended(succeeded=True, failed=False)
        ended = row()
        assert ended is not None and ended.current_job_id is None and ended.jobs_done == 1
        with db.session() as session:
            assert name in {w.name for w in admin_reads.live_workers(session)}
    finally:
        registry.stop()
    stopped = row()
    assert stopped is not None
    time.sleep(0.3)  # six beats' time: none came
    after = row()
    assert after is not None and after.last_heartbeat_at == stopped.last_heartbeat_at
    with db.session() as session:
        later = datetime.now(UTC).replace(year=datetime.now(UTC).year + 1)
        assert name not in {w.name for w in admin_reads.live_workers(session, now=later)}
        dead = {w.name: w for w in admin_reads.live_workers(session, now=later, include_dead=True)}
        assert dead[name].alive is False
    db.dispose()


# An exception in the beating thread fails the test (it is not the test's own thread).
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_registry_without_a_database_never_raises() -> None:
    db = Database("postgresql://nobody@127.0.0.1:1/none?connect_timeout=1")
    registry = WorkerRegistry(db, "ghost", 1, lambda: torch.device("cpu"), beat_seconds=0.05)
    try:
        registry.start()
        registry.job_started(uuid.uuid4())
        registry.job_ended(succeeded=False, failed=True)
        time.sleep(0.2)
    finally:
        registry.stop()
        db.dispose()
