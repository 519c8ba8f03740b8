"""A job's deadline (``Cancel-After`` on the submit, ``jobs.deadline_at``): a job not
finished by then is canceled with the error ``deadline_exceeded``.

Whoever holds the job ends it: a queued job (or one whose worker died) here,
from the claim that finds it past its deadline (``shared.jobs.claim_job``) or
the reconciler's sweep (``shared.reconciler.cancel_jobs_past_deadline``); a
running job under a live lease by its worker, which sees the deadline pass as
it sees a cancel request (``worker.reporter``, ``StopReason.DEADLINE``) and
writes the cancel (``shared.jobs.cancel_running_job``).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select
from sqlalchemy.orm import Session

from shared.job_store import guarded_update
from shared.models import TRANSITIONS, Job, JobStatus, utcnow

DEADLINE_EXCEEDED = "deadline_exceeded"


def deadline_error(deadline_at: datetime | None) -> dict[str, Any]:
    """The error columns of a job canceled for its deadline."""
    when = f" ({deadline_at.isoformat()})" if deadline_at is not None else ""
    return {
        "error_code": DEADLINE_EXCEEDED,
        "error_message": f"the job had not finished by its deadline{when}, set by Cancel-After",
    }


def past_deadline_unheld(now: datetime) -> ColumnElement[bool]:
    """Past its deadline and held by no worker: queued, or running under a lease that ran out,
    or a follower showing its leader's running (``shared.follows``: no worker holds it)."""
    return and_(
        Job.deadline_at <= now,
        or_(
            Job.status == JobStatus.QUEUED,
            and_(Job.status == JobStatus.RUNNING, Job.lease_expires_at < now),
            and_(Job.status == JobStatus.RUNNING, Job.follows.is_not(None)),
        ),
    )


def cancel_past_deadline(session: Session, job_id: uuid.UUID) -> bool:
    """Cancel ``job_id`` if it is past its deadline and no worker holds it; whether it was.

    One guarded UPDATE from the status read (queued → canceled, or running under
    an expired lease → canceled), so a worker that claims it meanwhile wins.
    """
    now = utcnow()
    row = session.execute(
        select(Job.status, Job.deadline_at, Job.follows).where(
            Job.id == job_id, past_deadline_unheld(now)
        )
    ).one_or_none()
    session.rollback()
    if row is None:
        return False
    status, deadline, leader = row
    transition = TRANSITIONS.cancel_queued
    where: list[ColumnElement[bool]] = [Job.deadline_at <= now]
    if status is JobStatus.RUNNING and leader is not None:  # its leader goes on
        transition = TRANSITIONS.cancel_follower
        where.append(Job.follows == leader)
    elif status is JobStatus.RUNNING:
        transition = TRANSITIONS.cancel_running
        where.append(Job.lease_expires_at < now)
    values = deadline_error(deadline)
    canceled = guarded_update(
        session,
        job_id,
        where,
        {
            **values,
            "finished_at": now,
            "updated_at": now,
            "eta_seconds": None,
            "lease_owner": None,
            "lease_expires_at": None,
            "checkpoint_file": None,
        },
        transition=transition,
        attempt=None,
        data={"while": status.value, **values},
    )
    return canceled is not None
