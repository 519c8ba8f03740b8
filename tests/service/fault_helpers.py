"""What the fault tests share: real worker processes and the per-test report.

Imported by the test modules, not fixtures. A fault test starts its own
``celery worker`` process groups with ``WorkerProcess``, kills them the way the
fault calls for, and ends with ``fault_report`` read from ``job_events``: the
database records every attempt, its worker and where it stopped and resumed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import service_helpers
from processes import stop_process_group
from sqlalchemy import select

from cli.server_cmds import worker_argv
from shared.db import Database
from shared.models import Job, JobEvent, JobStatus

READY_MARKERS = ("ready.", "loaded caffe VGG19")  # the main process's and the pool child's
READY_SECONDS = 90.0


class WorkerProcess:
    """One ``celery worker`` process group (prefork, one child), started for a test.

    Always ``stop()`` it (the ``worker_processes`` fixture does): SIGQUIT, then SIGKILL.
    """

    def __init__(
        self, env: dict[str, str], log_path: Path, name: str, *, quiet: bool = True
    ) -> None:
        """``quiet=False``: with gossip, mingle and heartbeats, as ``stylequeue worker`` runs."""
        self.name = name
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                worker_argv(hostname=f"{name}@%h", quiet=quiet),
                # One math thread each unless the test says otherwise: several workers
                # and the test itself share two cores, and oversubscribed threads crawl.
                env={**os.environ, "OMP_NUM_THREADS": "1", **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: the pool child is signalled too
            )
        try:
            service_helpers.wait_for(
                f"worker {name} to be ready",
                self._ready,
                timeout=READY_SECONDS,
                interval=0.1,
            )
        except BaseException:
            # Never ready (or it exited): nobody holds this object to stop it later.
            stop_process_group(self.process)
            raise

    @property
    def node_name(self) -> str:
        """Its Celery node name, started here (``<name>@%h``): the ``worker`` of its jobs."""
        return f"{self.name}@{socket.gethostname()}"

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"worker {self.name} exited early:\n{self.log()[-3000:]}")
        return all(marker in self.log() for marker in READY_MARKERS)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """Signal the whole group (main process and pool child) and wait for the main process."""
        os.killpg(self.process.pid, sig)
        self.process.wait(timeout=READY_SECONDS)

    def stop(self) -> None:
        stop_process_group(self.process)


def log_lines(text: str) -> list[dict[str, Any]]:
    """The JSON lines of a process's log (STYLEQUEUE_LOG_FORMAT=json): each a dict with
    ``logger``, ``level``, ``message`` and, for a job's events, ``event`` and ``job_id``.
    Anything else (Celery's banner, a half-written last line) is left out."""
    found = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return found


def job_log_events(text: str, job_id: uuid.UUID, event: str) -> list[dict[str, Any]]:
    """The JSON log lines of one of a job's events (the ``event`` and ``job_id`` fields)."""
    return [
        line
        for line in log_lines(text)
        if line.get("event") == event and line.get("job_id") == str(job_id)
    ]


@dataclass(frozen=True)
class FaultReport:
    """What a fault test reports: per test, over the jobs it submitted."""

    submitted: int
    completed: int  # succeeded
    run_twice: int  # jobs with two attempts alive at once, or more than one success
    iterations_redone: (
        int  # over all re-claims: where an attempt stopped minus where the next resumed
    )
    attempts: int  # claims in all

    def line(self, name: str) -> str:
        return (
            f"FAULT REPORT {name}: submitted={self.submitted} completed={self.completed} "
            f"run_twice={self.run_twice} iterations_redone={self.iterations_redone} "
            f"attempts={self.attempts}"
        )


def fault_report(
    db: Database,
    job_ids: Iterable[uuid.UUID],
    *,
    stopped_at: dict[uuid.UUID, list[int]] | None = None,
) -> FaultReport:
    """Read the report from the database.

    An attempt's stopping point is its ``released`` event, else its last
    ``checkpoint``, unless ``stopped_at`` gives the iterations the test saw on
    the row just before each kill of that job (work done after the last
    checkpoint is work lost). The next attempt resumed from its ``resumed``
    event's iteration, or from 0 without one.

    "Run twice" is an attempt that wrote an event after the next attempt's
    claim (two workers at once), or a second ``succeeded``.
    """
    ids = list(job_ids)
    stopped_at = stopped_at or {}
    with db.session() as session:
        rows = session.execute(select(Job.id, Job.status).where(Job.id.in_(ids)))
        statuses: dict[uuid.UUID, JobStatus] = {job_id: status for job_id, status in rows}
        events = list(
            session.scalars(select(JobEvent).where(JobEvent.job_id.in_(ids)).order_by(JobEvent.id))
        )
    by_job: dict[uuid.UUID, list[JobEvent]] = {job_id: [] for job_id in ids}
    for event in events:
        by_job[event.job_id].append(event)
    run_twice = redone = claims = 0
    for job_id, job_events in by_job.items():
        kills = list(stopped_at.get(job_id, []))
        claimed = [e for e in job_events if e.kind == "claimed"]
        claims += len(claimed)
        twice = sum(e.kind == "succeeded" for e in job_events) > 1
        for before, after in zip(claimed, claimed[1:], strict=False):
            late = [
                e
                for e in job_events
                if e.attempt == before.attempt and e.id > after.id and e.kind != "requeued"
            ]
            twice = twice or bool(late)
            stop = _stopped(job_events, before.attempt, kills)
            resumed = [e for e in job_events if e.attempt == after.attempt and e.kind == "resumed"]
            start = int(resumed[0].data.get("iteration", 0)) if resumed else 0
            redone += max(0, stop - start)
        run_twice += twice
    completed = sum(statuses.get(job_id) is JobStatus.SUCCEEDED for job_id in ids)
    return FaultReport(len(ids), completed, run_twice, redone, claims)


def _stopped(job_events: list[JobEvent], attempt: int, kills: list[int]) -> int:
    released = [e for e in job_events if e.attempt == attempt and e.kind == "released"]
    if released:
        return int(released[-1].data.get("iteration", 0))
    if kills:
        return kills.pop(0)
    checkpoints = [e for e in job_events if e.attempt == attempt and e.kind == "checkpoint"]
    return int(checkpoints[-1].data.get("iteration", 0)) if checkpoints else 0


def started_workers() -> tuple[list[WorkerProcess], Callable[[], None]]:
    """A list to append started workers to, and the function that stops them all."""
    started: list[WorkerProcess] = []

    def stop_all() -> None:
        for worker in started:
            worker.stop()

    return started, stop_all
