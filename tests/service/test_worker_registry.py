"""The worker side of the workers registry: registration, the beating thread, a database
that goes away (best effort: never an exception into the job)."""

from __future__ import annotations

import os
import socket
import time
import uuid
from datetime import UTC, datetime

import pytest
import torch
from service_helpers import wait_for
from sqlalchemy import delete, select

from shared import admin_reads
from shared.db import Database
from shared.models import Worker
from shared.workers import default_worker_name
from worker.registry import WorkerRegistry, describe_device


def test_describe_device_on_the_cpu() -> None:
    info = describe_device(torch.device("cpu"))
    assert (info.device, info.name, info.memory_bytes) == ("cpu", None, None)


def test_the_registry_registers_beats_and_stops(database_url: str) -> None:
    db = Database(database_url)
    # A pid no process has (Linux's pid_max is at most 2**22), and one of this run's own.
    pid = 2**30 + uuid.uuid4().int % 2**20
    name = f"registry-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"  # a node name
    registry = WorkerRegistry(
        db,
        name=name,
        hostname=socket.gethostname(),
        pid=pid,
        device=lambda: torch.device("cpu"),
        beat_seconds=0.05,
    )
    assert registry.name == name
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
    registry = WorkerRegistry(
        db,
        name="ghost@nowhere",
        hostname="nowhere",
        pid=1,
        device=lambda: torch.device("cpu"),
        beat_seconds=0.05,
    )
    try:
        registry.start()
        registry.job_started(uuid.uuid4())
        registry.job_ended(succeeded=False, failed=True)
        time.sleep(0.2)
    finally:
        registry.stop()
        db.dispose()


def _registry(db: Database, name: str, pid: int, hostname: str | None = None) -> WorkerRegistry:
    return WorkerRegistry(
        db,
        name=name,
        hostname=hostname or socket.gethostname(),
        pid=pid,
        device=lambda: torch.device("cpu"),
        beat_seconds=0.05,
    )


def _row(db: Database, name: str) -> Worker | None:
    with db.session() as session:
        return session.get(Worker, name)


def _unused_pid() -> int:
    return 2**30 + uuid.uuid4().int % 2**20  # above Linux's pid_max: no such process


def _duplicate_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if getattr(r, "event", None) == "duplicate_worker_name"
    ]


def test_a_restarted_pool_process_takes_its_workers_row_over(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    db = Database(database_url)
    name = f"restarted-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
    dead, restarted = _unused_pid(), _unused_pid()
    first = _registry(db, name, dead)
    try:
        first.start()
        first.job_started(uuid.uuid4())
    finally:
        first.stop()  # its process died: no beat from it any more
    second = _registry(db, name, restarted)
    try:
        with caplog.at_level("WARNING", logger="worker.registry"):
            second.start()
            registered = _row(db, name)
            assert registered is not None
            assert (registered.hostname, registered.pid) == (socket.gethostname(), restarted)
            assert registered.current_job_id is None, "the dead process's job is not its"
            wait_for(
                "a beat of the new process",
                lambda: (
                    (r := _row(db, name)) is not None
                    and r.last_heartbeat_at > registered.last_heartbeat_at
                ),
                timeout=10,
            )
        with db.session() as session:
            assert session.scalars(select(Worker.name).where(Worker.name == name)).all() == [name]
    finally:
        second.stop()
        db.dispose()
    assert not _duplicate_warnings(caplog), "its predecessor is gone: no duplicate"


def test_two_live_processes_under_one_name_are_warned_about_once_each(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    db = Database(database_url)
    name = f"twice-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
    other_pid = _unused_pid()
    alive = _registry(db, name, os.getpid())  # a process that exists: this one
    other = _registry(db, name, other_pid, hostname="elsewhere")
    try:
        with caplog.at_level("WARNING", logger="worker.registry"):
            alive.start()
            assert not _duplicate_warnings(caplog)
            other.start()  # registers over a live row of a process that exists
            [at_start] = _duplicate_warnings(caplog)
            assert f"pid {os.getpid()} on {socket.gethostname()}" in at_start
            assert "--name" in at_start
            # The first one's next beat finds the row taken: it warns too, and leaves the
            # row to the other rather than take it back on every beat.
            wait_for(
                "the other's warning", lambda: len(_duplicate_warnings(caplog)) == 2, timeout=10
            )
            assert f"pid {other_pid} on elsewhere" in _duplicate_warnings(caplog)[1]
            time.sleep(0.3)  # six beats of each: no more warnings, the row stays the other's
        assert len(_duplicate_warnings(caplog)) == 2
        row = _row(db, name)
        assert row is not None and (row.hostname, row.pid) == ("elsewhere", other_pid)
    finally:
        alive.stop()
        other.stop()
        db.dispose()


@pytest.mark.parametrize(
    ("device", "visible", "name"),
    [
        ("cuda", "3", "gpu3@box"),  # as the image's stylequeue-gpu-worker sets it
        ("auto", " 0 ", "gpu0@box"),
        ("auto", "GPU-8e3c5a1f-aa", "gpu-GPU-8e3c5a1f-aa@box"),
        ("auto", "MIG-1/2/0", "gpu-MIG-1-2-0@box"),
        ("cpu", "3", "cpu-42@box"),  # the CPU, whatever the GPUs
        ("auto", None, "worker-42@box"),  # no GPU named: which one is torch's choice
        ("cuda", "0,1", "worker-42@box"),
        ("auto", "-1", "worker-42@box"),  # every GPU hidden
        ("cpu", "", "cpu-42@box"),
    ],
)
def test_the_default_worker_name_is_unique_per_host_and_gpu(
    device: str, visible: str | None, name: str
) -> None:
    assert default_worker_name("box", 42, device=device, cuda_visible_devices=visible) == name


def test_a_beat_records_the_gpu_memory_in_use_where_there_is_a_gpu(database_url: str) -> None:
    from shared import workers
    from shared.workers import DeviceInfo

    db = Database(database_url)
    name = f"memory-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
    try:
        with db.session() as session:
            workers.register_worker(
                session, name=name, hostname="h", pid=1, device=DeviceInfo("cuda:0", "GPU", 8 << 30)
            )
            assert workers.beat(session, name, hostname="h", pid=1, memory_used_bytes=3 << 30)
            assert workers.beat(session, name, hostname="h", pid=1)  # a CPU beat: left as it was
        row = _row(db, name)
        assert row is not None and row.device_memory_used_bytes == 3 << 30
    finally:
        with db.session() as session:
            session.execute(delete(Worker).where(Worker.name == name))
            session.commit()
        db.dispose()
