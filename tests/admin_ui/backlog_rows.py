"""Jobs and workers of known sizes, run times and heartbeats, for the backlog figures.

``add_history`` and ``add_queue`` make a database whose backlog is known: the
queue's expected 145 s, and with ``add_running`` the running jobs' 105 s (see
their docstrings); ``add_workers`` the live workers.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import timedelta

from shared.db import Database
from shared.models import ApiClient, Job, JobStatus, utcnow
from shared.workers import DeviceInfo, job_started, register_worker


def add_job(
    db: Database,
    status: JobStatus,
    *,
    size: int,
    iterations: int,
    created_ago: float = 3600.0,
    run: float | None = None,
    finished_ago: float = 600.0,
    iteration: int = 0,
    eta: float | None = None,
) -> None:
    """One job of ``size`` px and ``iterations``; a finished one ran ``run`` seconds and
    finished ``finished_ago`` seconds ago."""
    now = utcnow()
    started = finished = None
    if status.is_finished:
        finished = now - timedelta(seconds=finished_ago)
        started = finished - timedelta(seconds=run or 0.0)
    elif status is JobStatus.RUNNING:
        started = now - timedelta(seconds=60)
    with db.session() as session:
        client = ApiClient(name="metrics", key_hash=secrets.token_hex(32))
        session.add(client)
        session.flush()
        session.add(
            Job(
                client_id=client.id,
                status=status,
                params={"size": size, "iterations": iterations},
                n_styles=1,
                iteration=iteration,
                iterations=iterations,
                eta_seconds=eta,
                created_at=now - timedelta(seconds=created_ago),
                started_at=started,
                finished_at=finished,
            )
        )
        session.commit()


def add_workers(db: Database, live: int, *, busy: int = 0) -> None:
    """``live`` workers beating now, the first ``busy`` of them running a job, and one whose
    last beat was an hour ago."""
    now = utcnow()
    beats = [now] * live + [now - timedelta(hours=1)]
    with db.session() as session:
        for number, beat in enumerate(beats):
            register_worker(
                session,
                name=f"w{number}@h/{number}",
                hostname="h",
                pid=number,
                device=DeviceInfo("cpu"),
                now=beat,
            )
            if number < busy:
                job_started(session, f"w{number}@h/{number}", uuid.uuid4())


def add_history(db: Database) -> None:
    """Succeeded jobs at 512 px of 1, 3 and 1 s per iteration (median 1), one at 1024 px of
    8 s per iteration (2 at 512 px's pixels: 1.5 over every size); and jobs the estimate
    leaves out: a failed one, and one that succeeded more than a day ago."""
    for run, iterations in ((100, 100), (300, 100), (200, 200)):
        add_job(db, JobStatus.SUCCEEDED, size=512, iterations=iterations, run=run)
    add_job(db, JobStatus.SUCCEEDED, size=1024, iterations=100, run=800)
    add_job(db, JobStatus.FAILED, size=512, iterations=10, run=5000)
    add_job(db, JobStatus.SUCCEEDED, size=512, iterations=10, run=5000, finished_ago=25 * 3600)


def add_queue(db: Database) -> None:
    """Queued: 50 iterations at 512 px (the oldest, 600 s ago), 40 at 256 px (a size
    without history), 10 at 1024 px."""
    add_job(db, JobStatus.QUEUED, size=512, iterations=50, created_ago=600)
    add_job(db, JobStatus.QUEUED, size=256, iterations=40, created_ago=300)
    add_job(db, JobStatus.QUEUED, size=1024, iterations=10, created_ago=100)


def add_running(db: Database) -> None:
    """Running: one with its worker's ETA of 30 s, one without (25 of 100 iterations done,
    at 512 px: 75 s at the history's 1 s per iteration)."""
    add_job(db, JobStatus.RUNNING, size=512, iterations=100, iteration=60, eta=30)
    add_job(db, JobStatus.RUNNING, size=512, iterations=100, iteration=25)
