"""The work waiting for the workers, in seconds: the scaling signal of ``GET /metrics``.

The backlog is the expected run seconds of every queued job plus the remaining
seconds of every running one; divided by the live workers it says how long the
workers there are now would take to clear it (with no live worker: the whole
backlog, the time one worker would take, so that the figure stays finite and
an autoscaler can still act on it).

A job's expected run time comes from the latest jobs that succeeded
(``HISTORY_JOBS`` of them, within ``HISTORY_HOURS``): their median seconds per
iteration at the job's output size, times its iterations. A size none of them
had is scaled from the median of all of them by its pixels; before any job has
succeeded, an iteration counts ``FALLBACK_SECONDS_PER_ITERATION`` at 512 px (an
assumption, not a measurement). A running job's remaining time is the ETA its
worker reported; without one (before its first progress, after its worker was
lost) it is its iterations left at the expected seconds per iteration.

Every read goes through an index: the history through ``ix_jobs_finished``
(newest first, ``HISTORY_JOBS`` rows), the queued and running jobs through
``ix_jobs_status_created``. The queued jobs' sizes are read for the oldest
``QUEUED_SAMPLE`` of them only; a longer queue is counted (index only, or the
caller's count by status) and taken to have the same mix.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from shared.models import Job, JobStatus
from shared.params import DEFAULT_SIZE_PX
from shared.sql_time import dialect_of, seconds_between

HISTORY_JOBS = 200
HISTORY_HOURS = 24
QUEUED_SAMPLE = 2000
REFERENCE_SIZE_PX = DEFAULT_SIZE_PX
FALLBACK_SECONDS_PER_ITERATION = 0.1  # at REFERENCE_SIZE_PX, until a job has succeeded


@dataclass(frozen=True)
class RunTimeModel:
    """Seconds per iteration, from the run times of the latest jobs that succeeded."""

    per_size: dict[int, float]  # output size (px) → median seconds per iteration at that size
    per_reference_pixels: float | None  # median over all sizes, scaled to REFERENCE_SIZE_PX
    history_jobs: int  # how many jobs it comes from; 0: FALLBACK_SECONDS_PER_ITERATION

    def seconds_per_iteration(self, size: int) -> float:
        measured = self.per_size.get(size)
        if measured is not None:
            return measured
        pixels = (size / REFERENCE_SIZE_PX) ** 2
        if self.per_reference_pixels is not None:
            return self.per_reference_pixels * pixels
        return FALLBACK_SECONDS_PER_ITERATION * pixels

    def expected_seconds(self, size: int, iterations: int) -> float:
        return self.seconds_per_iteration(size) * max(0, iterations)

    def remaining_seconds(
        self, size: int, iterations: int, iteration: int | None, eta: float | None
    ) -> float:
        """A running job's seconds left: its worker's ETA, else its iterations left."""
        if eta is not None:
            return max(0.0, float(eta))
        return self.expected_seconds(size, iterations - (iteration or 0))


@dataclass(frozen=True)
class Backlog:
    queued: int  # jobs queued now
    oldest_queued_age_seconds: float  # since the oldest queued job's submit; 0 when none
    queued_seconds: float  # expected run seconds of the queued jobs
    running: int  # jobs running now
    running_seconds: float  # remaining seconds of the running jobs
    live_workers: int
    history_jobs: int  # succeeded jobs the run time estimate comes from (0: the fallback)

    @property
    def seconds(self) -> float:
        return self.queued_seconds + self.running_seconds

    @property
    def seconds_per_worker(self) -> float:
        """The backlog over the live workers; the whole backlog when none is live."""
        return self.seconds / max(1, self.live_workers)


def _size() -> ColumnElement[Any]:
    """A job's output size from its parameters (every default is stored with the job)."""
    return Job.params["size"].as_integer()


def run_time_model(session: Session, now: datetime) -> RunTimeModel:
    run = seconds_between(dialect_of(session), Job.started_at, Job.finished_at)
    query = (
        select(_size(), run, Job.iterations)
        .where(
            Job.finished_at >= now - timedelta(hours=HISTORY_HOURS),
            Job.status == JobStatus.SUCCEEDED,
            Job.started_at.is_not(None),
        )
        .order_by(Job.finished_at.desc())
        .limit(HISTORY_JOBS)
    )
    by_size: dict[int, list[float]] = defaultdict(list)
    scaled: list[float] = []
    for size, seconds, iterations in session.execute(query):
        if not iterations or seconds is None:
            continue
        size = int(size or DEFAULT_SIZE_PX)
        per_iteration = max(0.0, float(seconds)) / iterations
        by_size[size].append(per_iteration)
        scaled.append(per_iteration / (size / REFERENCE_SIZE_PX) ** 2)
    return RunTimeModel(
        per_size={size: statistics.median(values) for size, values in by_size.items()},
        per_reference_pixels=statistics.median(scaled) if scaled else None,
        history_jobs=len(scaled),
    )


def backlog(
    session: Session, now: datetime, *, live_workers: int, queued_count: int | None = None
) -> Backlog:
    """The queued and running jobs' expected seconds, with ``live_workers`` to share them.

    ``queued_count``, the queued jobs as the caller counted them, saves counting a
    queue longer than ``QUEUED_SAMPLE`` again.
    """
    model = run_time_model(session, now)
    queued, oldest, queued_seconds = _queued(session, model, queued_count)
    running, running_seconds = _running(session, model)
    return Backlog(
        queued=queued,
        oldest_queued_age_seconds=(
            0.0 if oldest is None else max(0.0, (now - oldest).total_seconds())
        ),
        queued_seconds=queued_seconds,
        running=running,
        running_seconds=running_seconds,
        live_workers=live_workers,
        history_jobs=model.history_jobs,
    )


def _queued(
    session: Session, model: RunTimeModel, queued_count: int | None
) -> tuple[int, datetime | None, float]:
    """(queued jobs, the oldest one's created_at, their expected seconds)."""
    oldest_first = (
        select(
            _size().label("size"),
            Job.iterations.label("iterations"),
            Job.created_at.label("created_at"),
        )
        .where(Job.status == JobStatus.QUEUED)
        .order_by(Job.created_at, Job.id)
        .limit(QUEUED_SAMPLE)
        .subquery()
    )
    groups = session.execute(
        select(
            oldest_first.c.size,
            oldest_first.c.iterations,
            func.count(),
            func.min(oldest_first.c.created_at),
        ).group_by(oldest_first.c.size, oldest_first.c.iterations)
    ).all()
    sampled = 0
    seconds = 0.0
    oldest: datetime | None = None
    for size, iterations, count, created_at in groups:
        sampled += int(count)
        seconds += int(count) * model.expected_seconds(int(size or DEFAULT_SIZE_PX), iterations)
        if created_at is not None and (oldest is None or created_at < oldest):
            oldest = created_at
    if sampled < QUEUED_SAMPLE:
        return sampled, oldest, seconds
    queued = queued_count
    if queued is None:
        where = Job.status == JobStatus.QUEUED
        queued = int(session.scalar(select(func.count()).select_from(Job).where(where)) or 0)
    queued = max(queued, sampled)
    return queued, oldest, seconds * queued / sampled


def _running(session: Session, model: RunTimeModel) -> tuple[int, float]:
    """(running jobs, their remaining seconds)."""
    rows = session.execute(
        select(_size(), Job.iterations, Job.iteration, Job.eta_seconds).where(
            Job.status == JobStatus.RUNNING
        )
    ).all()
    seconds = sum(
        model.remaining_seconds(int(size or DEFAULT_SIZE_PX), iterations, iteration, eta)
        for size, iterations, iteration, eta in rows
    )
    return len(rows), seconds
