"""Faults: SIGTERM to a worker mid-job. The worker checkpoints and hands the job back
(queued again, not failed); a restarted worker resumes from that checkpoint and finishes it.

The real ``celery worker`` (prefork, one child), signalled the way ``docker stop`` does it
(SIGTERM to the main process alone) and the way systemd does it (to the whole process group).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import service_helpers
from fault_helpers import WorkerProcess, fault_report, started_workers
from service_helpers import store_job
from sqlalchemy import select

from shared.auth import create_client
from shared.celery_app import create_celery, enqueue_job
from shared.db import Database
from shared.models import Job, JobEvent, JobStatus
from shared.settings import Settings
from shared.storage import LocalStorage

pytestmark = pytest.mark.slow

ITERATIONS = 600  # at 32 px: several seconds of work (~75 iterations/s on 2 busy cores)
WAIT_SECONDS = 90.0


def wait_for(what: str, found: Callable[[], Any]) -> Any:
    return service_helpers.wait_for(what, found, timeout=WAIT_SECONDS, interval=0.1)


@pytest.fixture
def env(postgresql_url: str, redis_url: str, redis_prefix: str, tmp_path: Path) -> dict[str, str]:
    return {
        "STYLEQUEUE_DATABASE_URL": postgresql_url,
        "STYLEQUEUE_REDIS_URL": redis_url,
        "STYLEQUEUE_REDIS_PREFIX": f"{redis_prefix}sigterm:",
        "STYLEQUEUE_DATA_DIR": str(tmp_path / "data"),
        "STYLEQUEUE_DEVICE": "cpu",
        "STYLEQUEUE_HEARTBEAT_SECONDS": "0.1",
        "STYLEQUEUE_CHECKPOINT_SECONDS": "0.5",
        "STYLEQUEUE_LEASE_SECONDS": "30",
    }


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    started, stop_all = started_workers()
    yield started
    stop_all()


@pytest.mark.parametrize("to_group", [False, True], ids=["main-process", "process-group"])
def test_sigterm_mid_job_hands_the_job_back_and_a_restarted_worker_resumes_it(
    to_group: bool,
    env: dict[str, str],
    workers: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    settings = Settings.from_env(env)
    db = Database(settings.database_url)
    storage = LocalStorage(settings.data_dir)
    celery = create_celery(settings)

    def events(kind: str) -> list[JobEvent]:
        with db.session() as s:
            query = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == kind)
            return list(s.scalars(query.order_by(JobEvent.id)))

    def row() -> Job:
        with db.session() as s:
            found = s.get(Job, job_id)
            assert found is not None
            return found

    try:
        workers.append(WorkerProcess(env, tmp_path / "first.log", "first"))
        with db.session() as session:
            client, _ = create_client(session, "sigterm")
            job_id = store_job(
                session,
                storage,
                client.id,
                iterations=ITERATIONS,
                enqueue=lambda job_id: enqueue_job(celery, job_id),
            )
        wait_for("a checkpoint", lambda: events("checkpoint"))

        first = workers[0].process
        if to_group:
            os.killpg(first.pid, signal.SIGTERM)
        else:
            first.send_signal(signal.SIGTERM)
        first.wait(timeout=WAIT_SECONDS)  # a warm shutdown that does not wait for the job
        log = workers[0].log_path.read_text(errors="replace")

        stopped = row()
        assert stopped.status is JobStatus.QUEUED, log[-3000:]
        assert stopped.lease_owner is None and stopped.lease_expires_at is None
        assert stopped.attempts == 1 and stopped.error_code is None
        [released] = events("released")
        assert released.attempt == 1 and 0 < released.data["iteration"] < ITERATIONS
        # The checkpoint of where it stopped, named by the row in the hand-back.
        assert stopped.checkpoint_file == f"checkpoint.a1.i{released.data['iteration']}.bin"
        assert storage.exists(job_id, stopped.checkpoint_file)
        assert not events("failed")

        workers.append(WorkerProcess(env, tmp_path / "second.log", "second"))
        wait_for("the job to succeed", lambda: row().status is JobStatus.SUCCEEDED)
        [resumed] = events("resumed")
        assert resumed.attempt == 2
        # Resumed exactly where the first worker stopped: no iteration redone.
        assert resumed.data["iteration"] == released.data["iteration"]
        claims = events("claimed")
        assert [c.attempt for c in claims] == [1, 2]
        assert claims[0].worker != claims[1].worker
        report = fault_report(db, [job_id])
        print(report.line(f"sigterm-{'group' if to_group else 'main'}"))
        assert (report.submitted, report.completed, report.run_twice) == (1, 1, 0)
        assert report.iterations_redone == 0
    finally:
        celery.close()
        db.dispose()
