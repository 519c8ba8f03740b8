"""The operators' reads besides the job list: workers, clients, live progress, job images.

``live_workers`` reads the ``workers`` registry (the admin API, the page and the
metrics); ``client_choices`` the clients a job table can be filtered by;
``live_jobs`` the progress of the jobs a page shows, polled every few seconds;
``job_image_file`` the file behind one of a job's images; ``job_actions`` which
actions an operator may take on a job now. Every function takes a SQLAlchemy
session and returns frozen dataclasses.
"""

from __future__ import annotations

import re
import uuid
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.admin import AdminJobDetail
from shared.errors import NotFoundError
from shared.job_view import job_timings
from shared.models import (
    RETRYABLE_STATUSES,
    ApiClient,
    EventKind,
    Job,
    JobEvent,
    JobLosses,
    JobStatus,
    Worker,
    utcnow,
)
from shared.storage import (
    CONTENT_FILE,
    Storage,
    committed_preview,
    committed_result,
    style_file,
)
from shared.workers import ALIVE_SECONDS

_STYLE_IMAGE = re.compile(r"style-[0-9]{1,3}")


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
    device_memory_used_bytes: int | None = None  # what it holds on its GPU, as of its last beat


def live_workers(
    session: Session, *, now: datetime | None = None, include_dead: bool = False
) -> list[WorkerInfo]:
    """The workers whose last heartbeat is recent (``alive``), by name; with
    ``include_dead`` every registered worker (the dead ones with alive=False)."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=ALIVE_SECONDS)
    query = select(Worker).order_by(Worker.name)
    if not include_dead:
        query = query.where(Worker.last_heartbeat_at >= cutoff)
    return [
        WorkerInfo(
            name=w.name,
            hostname=w.hostname,
            pid=w.pid,
            device=w.device,
            device_name=w.device_name,
            device_memory_bytes=w.device_memory_bytes,
            started_at=w.started_at,
            last_heartbeat_at=w.last_heartbeat_at,
            current_job_id=w.current_job_id,
            jobs_done=w.jobs_done,
            jobs_failed=w.jobs_failed,
            alive=w.last_heartbeat_at >= cutoff,
            device_memory_used_bytes=w.device_memory_used_bytes,
        )
        for w in session.scalars(query)
    ]


@dataclass(frozen=True)
class ClientChoice:
    id: int
    name: str


def client_choices(session: Session, *, limit: int) -> list[ClientChoice]:
    """The first ``limit`` clients by name, for a client filter."""
    query = select(ApiClient.id, ApiClient.name).order_by(ApiClient.name).limit(limit)
    return [ClientChoice(client_id, name) for client_id, name in session.execute(query)]


@dataclass(frozen=True)
class LiveJob:
    """What changes while a job is queued or running (and what it ended with)."""

    id: uuid.UUID
    status: JobStatus
    iteration: int
    iterations: int
    percent: float
    eta_seconds: float | None
    worker: str | None
    cancel_requested: bool
    preview_version: int | None  # while running: what changes with its committed preview
    attempts: int = 0
    queue_seconds: float = 0.0  # as job_timings measures them now
    run_seconds: float | None = None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    error_code: str | None = None
    error_message: str | None = None
    has_preview: bool = False
    started: bool = False  # started_at is set: it ran (a job canceled while queued did not)
    losses_version: int | None = None  # changes when its loss curve does; None: no curve yet


def _preview_version(storage: Storage, job_id: uuid.UUID, named: str | None) -> int | None:
    """What changes when a running job's preview does: the committed preview's name (each
    preview of an attempt has its own), or, for a job from before named previews, the
    file's mtime where the store has files."""
    if named is not None:
        return zlib.crc32(named.encode())
    path = storage.local_path(job_id, committed_preview(named))
    try:
        return None if path is None else path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def live_jobs(
    session: Session, storage: Storage, ids: list[uuid.UUID], *, now: datetime | None = None
) -> list[LiveJob]:
    """The jobs among ``ids`` that exist (unknown ids are left out)."""
    if not ids:
        return []
    now = now or utcnow()
    rows = session.execute(
        select(
            Job.id,
            Job.status,
            Job.iteration,
            Job.iterations,
            Job.percent,
            Job.eta_seconds,
            Job.worker,
            Job.cancel_requested,
            Job.preview_file,
            Job.attempts,
            Job.created_at,
            Job.started_at,
            Job.finished_at,
            Job.lease_owner,
            Job.lease_expires_at,
            Job.error_code,
            Job.error_message,
        ).where(Job.id.in_(ids))
    ).all()
    curves = {
        job_id: int(at.timestamp() * 1000)
        for job_id, at in session.execute(
            select(JobLosses.job_id, func.max(JobLosses.updated_at))
            .where(JobLosses.job_id.in_(ids))
            .group_by(JobLosses.job_id)
        )
        if at is not None
    }
    found: list[LiveJob] = []
    for row in rows:
        version = None
        if row.status is JobStatus.RUNNING:
            version = _preview_version(storage, row.id, row.preview_file)
        timings = job_timings(row.created_at, row.started_at, row.finished_at, now)
        found.append(
            LiveJob(
                id=row.id,
                status=row.status,
                iteration=row.iteration,
                iterations=row.iterations,
                percent=row.percent,
                eta_seconds=row.eta_seconds,
                worker=row.worker,
                cancel_requested=row.cancel_requested,
                preview_version=version,
                attempts=row.attempts,
                queue_seconds=timings.queue_seconds,
                run_seconds=timings.run_seconds,
                lease_owner=row.lease_owner,
                lease_expires_at=row.lease_expires_at,
                error_code=row.error_code,
                error_message=row.error_message,
                has_preview=row.preview_file is not None,
                started=row.started_at is not None,
                losses_version=curves.get(row.id),
            )
        )
    return found


def job_image_file(session: Session, job_id: uuid.UUID, image: str) -> str:
    """The file name of a job's image: ``content``, ``style-N``, or the ``preview`` and
    ``result`` its row names (only the ones its attempt committed). NotFoundError
    ``image_not_found`` for any other name; the file itself may not exist."""
    if image == "content":
        return CONTENT_FILE
    if image in ("preview", "result"):
        column = Job.preview_file if image == "preview" else Job.result_file
        named = session.execute(select(column).where(Job.id == job_id)).scalar()
        return committed_preview(named) if image == "preview" else committed_result(named)
    if _STYLE_IMAGE.fullmatch(image):
        return style_file(int(image[6:]))
    raise NotFoundError(
        f"no image {image!r}: content, style-N, preview or result", code="image_not_found"
    )


def files_gone_reason(session: Session, job_id: uuid.UUID) -> str:
    """Why a job's files are gone, in the words its client reads: an operator deleted
    them (a ``files_deleted`` event naming an admin), or the retention period did."""
    data = session.scalar(
        select(JobEvent.data)
        .where(JobEvent.job_id == job_id, JobEvent.kind == EventKind.FILES_DELETED)
        .order_by(JobEvent.at.desc())
        .limit(1)
    )
    if data and data.get("by"):
        return "deleted by an operator"
    return "removed after the retention period"


@dataclass(frozen=True)
class JobActions:
    """Which of the admin actions a job takes now."""

    cancel: bool  # queued or running
    retry: bool  # failed or canceled, its files still there
    delete_files: bool  # finished, its files still there


def job_actions(detail: AdminJobDetail) -> JobActions:
    status = detail.job.status
    return JobActions(
        cancel=not status.is_finished,
        retry=status in RETRYABLE_STATUSES and not detail.files_deleted,
        delete_files=status.is_finished and not detail.files_deleted,
    )
