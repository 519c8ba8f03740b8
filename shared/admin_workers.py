"""The /admin workers page: every registered worker with what is true of it now.

A row of the ``workers`` registry says what its process last wrote; this adds
what the jobs say, so that the page agrees with the rest of /admin:

- the current job only of a live worker, and only while that job runs under
  its lease (a gone process's row may still name the job it died with); with
  batches (``STYLEQUEUE_BATCH_MAX``) every job running under its lease, from the
  jobs themselves (the registry names one);
- its jobs that finished in the statistics' window, by outcome: the figures of
  ``shared.stats`` (``worker_stats``, the statistics page's per-worker table),
  not the registry's own counters, which restart with the process;
- its last error: the latest failed job among its last ``ERROR_LOOKBACK_JOBS``.

Workers gone (no beat for ``shared.workers.ALIVE_SECONDS``) for less than
``FOLD_AFTER_SECONDS`` are shown greyed with the live ones; older ones are folded
away, newest first, at most ``FOLDED_SHOWN``. A worker that restarts under the
same name takes its row over (``shared.workers.register_worker``): one row.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.admin_reads import WorkerInfo, live_workers
from shared.models import Job, JobStatus, utcnow
from shared.stats import DEFAULT_STATS_HOURS, WorkerStats, worker_stats

FOLD_AFTER_SECONDS = 600.0
FOLDED_SHOWN = 200
ERROR_LOOKBACK_JOBS = 500


@dataclass(frozen=True)
class WorkerError:
    """A worker's latest failed job."""

    job_id: uuid.UUID
    code: str | None
    message: str | None
    at: datetime | None


@dataclass(frozen=True)
class WorkerRow:
    info: WorkerInfo
    seconds_since_beat: float
    current_job_id: uuid.UUID | None  # live, and that job runs under this worker's lease
    window: WorkerStats | None  # its jobs finished in the window; None: none
    last_error: WorkerError | None
    # Every job running under its lease, oldest start first (more than one: a batch).
    running_job_ids: tuple[uuid.UUID, ...] = ()


@dataclass(frozen=True)
class WorkersOverview:
    hours: int  # the window of ``WorkerRow.window``, as on the statistics page
    shown: list[WorkerRow]  # live ones first, then the recently gone, each by name
    folded: list[WorkerRow]  # gone longer than FOLD_AFTER_SECONDS, newest beat first
    folded_total: int

    @property
    def alive(self) -> int:
        return sum(1 for row in self.shown if row.info.alive)


def workers_overview(
    session: Session, *, now: datetime | None = None, hours: int = DEFAULT_STATS_HOURS
) -> WorkersOverview:
    now = now or utcnow()
    everyone = live_workers(session, now=now, include_dead=True)
    age = {w.name: (now - w.last_heartbeat_at).total_seconds() for w in everyone}
    recent = [w for w in everyone if w.alive or age[w.name] < FOLD_AFTER_SECONDS]
    old = sorted(
        (w for w in everyone if not (w.alive or age[w.name] < FOLD_AFTER_SECONDS)),
        key=lambda w: w.last_heartbeat_at,
        reverse=True,
    )
    recent.sort(key=lambda w: (not w.alive, w.name))
    running = running_under_lease(session, [w.name for w in recent if w.alive])
    window = {s.worker: s for s in worker_stats(session, now=now, hours=hours)}

    def row(w: WorkerInfo, *, details: bool) -> WorkerRow:
        return WorkerRow(
            info=w,
            seconds_since_beat=max(0.0, age[w.name]),
            current_job_id=_current(w, running.get(w.name, ())),
            running_job_ids=running.get(w.name, ()),
            window=window.get(w.name),
            last_error=_last_error(session, w.name) if details else None,
        )

    return WorkersOverview(
        hours=hours,
        shown=[row(w, details=True) for w in recent],
        folded=[row(w, details=False) for w in old[:FOLDED_SHOWN]],
        folded_total=len(old),
    )


def running_under_lease(session: Session, names: list[str]) -> dict[str, tuple[uuid.UUID, ...]]:
    """Worker name → the jobs running under its lease, oldest start first (none: absent)."""
    if not names:
        return {}
    rows = session.execute(
        select(Job.id, Job.lease_owner)
        .where(Job.status == JobStatus.RUNNING, Job.lease_owner.in_(names))
        .order_by(Job.started_at, Job.id)
    )
    found: dict[str, list[uuid.UUID]] = {}
    for job_id, owner in rows:
        if owner is not None:
            found.setdefault(owner, []).append(job_id)
    return {name: tuple(ids) for name, ids in found.items()}


def _current(worker: WorkerInfo, running: tuple[uuid.UUID, ...]) -> uuid.UUID | None:
    # The job its row names while that one runs under its lease, else its oldest running.
    if worker.current_job_id in running:
        return worker.current_job_id
    return running[0] if running else None


def _last_error(session: Session, worker: str) -> WorkerError | None:
    latest = (
        select(
            Job.id, Job.status, Job.error_code, Job.error_message, Job.finished_at, Job.created_at
        )
        .where(Job.worker == worker)
        .order_by(Job.created_at.desc(), Job.id.desc())
        .limit(ERROR_LOOKBACK_JOBS)
        .subquery()
    )
    found = session.execute(
        select(latest.c.id, latest.c.error_code, latest.c.error_message, latest.c.finished_at)
        .where(latest.c.status == JobStatus.FAILED)
        .order_by(latest.c.created_at.desc(), latest.c.id.desc())
        .limit(1)
    ).first()
    if found is None:
        return None
    return WorkerError(found[0], found[1], found[2], found[3])
