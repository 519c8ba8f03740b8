"""What operators see and do, for every client (issue 6): the admin API, page and metrics use this.

Reads: ``list_jobs`` (filtered, keyset-paginated, newest first), ``job_detail``
(a job with its event timeline), ``job_stats`` (counts, throughput, wait and
run time percentiles, per worker), ``live_workers`` (the ``workers`` registry).
Actions: ``cancel_job``, ``retry_job`` (a failed or canceled job queued again),
``delete_job_files``. Every function takes a SQLAlchemy session and returns
frozen dataclasses; the HTTP layer turns them into JSON.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from shared.jobs import Enqueue
from shared.models import Job, JobStatus
from shared.pagination import Cursor
from shared.storage import LocalStorage

DEFAULT_STATS_HOURS = 24
MAX_STATS_HOURS = 24 * 31


@dataclass(frozen=True)
class JobFilters:
    """Which jobs ``list_jobs`` returns; every filter given must hold (AND).

    ``statuses``: any of these (empty: every status). ``worker``: the worker
    that ran (or last ran) the job, exactly. ``created_from`` is inclusive,
    ``created_to`` exclusive; both timezone-aware.
    """

    statuses: tuple[JobStatus, ...] = ()
    client_id: int | None = None
    worker: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None


@dataclass(frozen=True)
class AdminJob:
    """One job as a table row: the client JSON's fields (the ``JobRecord`` protocol,
    so ``api.job_json.job_dict`` takes it) plus its client's id and name."""

    id: uuid.UUID
    client_id: int
    client_name: str
    status: JobStatus
    params: dict[str, Any]
    iteration: int
    iterations: int
    percent: float
    eta_seconds: float | None
    attempts: int
    worker: str | None
    error_code: str | None
    error_message: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True)
class AdminJobPage:
    items: list[AdminJob]
    next_cursor: str | None  # pass back as ``Cursor.decode(next_cursor)``; None: last page


@dataclass(frozen=True)
class TimelineEvent:
    """One ``job_events`` row: created, claimed (per attempt), resumed, checkpoint,
    cancel_requested, released, requeued, retried, succeeded/failed/canceled, files_deleted."""

    at: datetime
    kind: str
    attempt: int
    worker: str | None
    data: dict[str, Any]


@dataclass(frozen=True)
class AdminJobDetail:
    """A job, its client, its whole history and its durations."""

    job: AdminJob
    n_styles: int
    cancel_requested: bool
    lease_owner: str | None
    lease_expires_at: datetime | None
    updated_at: datetime
    queue_seconds: float  # created → first start (→ now while still queued)
    run_seconds: float | None  # first start → finish (→ now while running); None if never started
    files_deleted: bool  # a files_deleted event exists (retention or an admin)
    events: list[TimelineEvent]  # oldest first


@dataclass(frozen=True)
class Percentiles:
    """Seconds; None when there was nothing to measure."""

    count: int
    p50: float | None
    p95: float | None


@dataclass(frozen=True)
class HourBucket:
    hour_start: datetime  # UTC, on the hour
    created: int
    finished: int  # succeeded + failed + canceled in that hour


@dataclass(frozen=True)
class WorkerStats:
    """One worker's jobs that finished in the window (by the job's ``worker`` column)."""

    worker: str
    succeeded: int
    failed: int
    canceled: int
    run_seconds: Percentiles  # over its succeeded jobs


@dataclass(frozen=True)
class JobStats:
    """All-time counts by status; the rest over jobs finished in [window_start, now)."""

    now: datetime
    hours: int
    window_start: datetime
    counts: dict[str, int]  # every JobStatus value, zeros included
    total: int
    per_hour: list[HourBucket]  # oldest first, ``hours`` buckets, the last one the current hour
    succeeded: int
    failed: int
    canceled: int
    failure_rate: float | None  # failed / (succeeded + failed); None when both are 0
    queue_seconds: Percentiles  # created → first start, jobs that started and finished in window
    run_seconds: Percentiles  # first start → finish, jobs that succeeded in the window
    workers: list[WorkerStats] = field(default_factory=list)  # by name


@dataclass(frozen=True)
class WorkerInfo:
    """A worker process from the ``workers`` registry."""

    name: str  # hostname/pid, the ``worker`` that jobs show
    hostname: str
    pid: int
    device: str  # "cpu", "cuda:0", …
    device_name: str | None  # the GPU's name; None on the CPU
    device_memory_bytes: int | None  # the GPU's total memory; None on the CPU
    started_at: datetime
    last_heartbeat_at: datetime
    current_job_id: uuid.UUID | None
    jobs_done: int  # succeeded
    jobs_failed: int
    alive: bool  # a heartbeat within shared.workers.ALIVE_SECONDS


def list_jobs(
    session: Session, filters: JobFilters, *, limit: int, cursor: Cursor | None
) -> AdminJobPage:
    """Every client's jobs matching ``filters``, newest first (created_at, id), one keyset page."""
    raise NotImplementedError


def job_detail(session: Session, job_id: uuid.UUID) -> AdminJobDetail:
    """A job with its event timeline; NotFoundError (job_not_found) when unknown."""
    raise NotImplementedError


def job_stats(
    session: Session, *, now: datetime | None = None, hours: int = DEFAULT_STATS_HOURS
) -> JobStats:
    """Counts by status (all time) and, over the last ``hours``, throughput, queue wait
    and run time p50/p95, failure rate, per worker. InvalidInputError if ``hours`` is
    not 1..MAX_STATS_HOURS."""
    raise NotImplementedError


def live_workers(
    session: Session, *, now: datetime | None = None, include_dead: bool = False
) -> list[WorkerInfo]:
    """The workers whose last heartbeat is recent (``alive``), by name; with
    ``include_dead`` every registered worker (the dead ones with alive=False)."""
    raise NotImplementedError


def cancel_job(session: Session, job_id: uuid.UUID) -> Job:
    """Cancel any client's queued or running job (a running one stops at its next
    heartbeat); a finished job is returned unchanged. NotFoundError when unknown."""
    raise NotImplementedError


def retry_job(session: Session, job_id: uuid.UUID, enqueue: Enqueue) -> Job:
    """A failed or canceled job queued again: the error cleared, the next claim a new
    attempt, its history kept with a ``retried`` event; then enqueued.

    ConflictError ``job_not_retryable`` for any other status, or ``job_files_deleted``
    when its input files are gone. NotFoundError when unknown.
    """
    raise NotImplementedError


def delete_job_files(session: Session, storage: LocalStorage, job_id: uuid.UUID) -> Job:
    """Remove a job's files (inputs, preview, checkpoint, result) and record ``files_deleted``.

    Only for a finished job: a queued or running one is a ConflictError
    ``job_not_finished`` (cancel it first). Idempotent. NotFoundError when unknown.
    """
    raise NotImplementedError
