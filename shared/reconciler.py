"""The reconciler's sweeps, run periodically by ``stylequeue scheduler``
(``worker.tasks.reconcile``): re-send jobs whose message may be lost or whose
worker stopped renewing its lease, give up on jobs whose workers died too often,
cancel jobs past their deadline that no worker holds, and delete the files of
jobs finished longer ago than the retention period.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from shared.deadlines import cancel_past_deadline, past_deadline_unheld
from shared.job_store import guarded_update
from shared.jobs import Exhausted, claimable, died_attempts, fail_exhausted_job
from shared.models import FINISHED_STATUSES, EventKind, Job, JobEvent, JobStatus, utcnow
from shared.storage import Storage
from shared.submissions import Enqueue


def requeue_stale_jobs(
    session: Session, *, older_than_seconds: float, enqueue: Enqueue, limit: int | None = 1000
) -> list[uuid.UUID]:
    """Enqueue again the queued jobs that nothing has touched for ``older_than_seconds``
    (their message may be lost), and the running jobs whose lease expired.

    A running job's lease expires only when its worker stopped renewing it (it
    died, or lost the database): that job is re-sent at the first run after the
    expiry, not ``older_than_seconds`` later. A job still in the broker gets a
    second message: harmless, the second claim is a no-op. ``updated_at`` is
    touched so each job is re-sent at most once per period (a re-sent running
    job has ``updated_at`` past its lease's expiry; a heartbeat or claim always
    leaves it before). ``limit=None``: every such job (after Redis lost its keys).
    """
    now = utcnow()
    cutoff = now - timedelta(seconds=older_than_seconds)
    stale_condition = or_(
        # A follower is never sent: its leader's end settles it (shared.follows).
        and_(Job.status == JobStatus.QUEUED, Job.updated_at < cutoff, Job.follows.is_(None)),
        and_(
            Job.status == JobStatus.RUNNING,
            Job.lease_expires_at < now,
            or_(Job.updated_at <= Job.lease_expires_at, Job.updated_at < cutoff),
        ),
    )
    stale = list(
        session.scalars(select(Job.id).where(stale_condition).order_by(Job.created_at).limit(limit))
    )
    requeued = []
    for job_id in stale:
        touched = guarded_update(
            session, job_id, [stale_condition], {"updated_at": now}, event=EventKind.REQUEUED
        )
        if touched is None:
            continue
        enqueue(job_id)
        requeued.append(job_id)
    return requeued


def fail_exhausted_jobs(
    session: Session, storage: Storage, *, max_attempts: int, limit: int = 1000
) -> list[Exhausted]:
    """The reconciler's side of the attempts cap: fail every claimable job whose
    workers died ``max_attempts`` times (``too_many_attempts``) and remove its
    checkpoint, rather than re-enqueue it. A worker's claim refuses such a job too."""
    now = utcnow()
    candidates = list(
        session.scalars(
            select(Job.id)
            .where(
                Job.attempts >= max_attempts,  # cheap: a job never died more than it ran
                claimable(now),
                died_attempts() >= max_attempts,
            )
            .order_by(Job.created_at)
            .limit(limit)
        )
    )
    session.rollback()
    failed = []
    for job_id in candidates:
        exhausted = fail_exhausted_job(session, job_id, max_attempts=max_attempts)
        if exhausted is not None:
            storage.delete_checkpoints(job_id)
            failed.append(exhausted)
    return failed


def cancel_jobs_past_deadline(
    session: Session, storage: Storage, *, limit: int = 1000
) -> list[uuid.UUID]:
    """Cancel (``deadline_exceeded``) every job past its deadline that no worker holds: a
    queued one, or a running one whose lease ran out; a canceled job is never resumed, so
    its checkpoints go. A running job under a live lease is its worker's to stop."""
    found = list(
        session.scalars(
            select(Job.id)
            .where(past_deadline_unheld(utcnow()))
            .order_by(Job.deadline_at)
            .limit(limit)
        )
    )
    session.rollback()
    canceled = []
    for job_id in found:
        if cancel_past_deadline(session, job_id):
            storage.delete_checkpoints(job_id)
            canceled.append(job_id)
    return canceled


def delete_expired_files(
    session: Session, storage: Storage, *, older_than_seconds: float, limit: int = 1000
) -> list[uuid.UUID]:
    """Remove the files of jobs that finished more than ``older_than_seconds`` ago.

    The row and its events stay (the job's history); a ``files_deleted`` event
    marks the job so that it is not looked at again. Files go first and the
    event after: a crash in between only means the next run deletes nothing again.
    """
    cutoff = utcnow() - timedelta(seconds=older_than_seconds)
    already_deleted = (
        select(JobEvent.id)
        .where(JobEvent.job_id == Job.id, JobEvent.kind == EventKind.FILES_DELETED)
        .exists()
    )
    expired = list(
        session.scalars(
            select(Job.id)
            .where(
                Job.status.in_(sorted(FINISHED_STATUSES)),
                Job.finished_at < cutoff,
                ~already_deleted,
            )
            .order_by(Job.finished_at)
            .limit(limit)
        )
    )
    session.rollback()  # no transaction held open while deleting files
    for job_id in expired:
        storage.delete_job_files(job_id)
        session.add(JobEvent(job_id=job_id, kind=EventKind.FILES_DELETED))
        session.commit()
    return expired
