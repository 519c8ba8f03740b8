"""What the holder of a job's lease writes while it runs the job, the status unchanged:
the renewal with its progress (``heartbeat``), the files it commits
(``record_checkpoint``, ``record_preview``), a resume; and the end of the lease
of a dead pool process (``expire_lease_of_dead_worker``).

Each write holds only while the claim (``shared.jobs.Claim``) still holds the
lease, through the same guarded update as every transition; otherwise
``LeaseLostError``, and nothing changes.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.job_store import guarded_update
from shared.jobs import Claim, progress_percent
from shared.models import EventKind, Job, JobEvent, JobStatus, utcnow


def heartbeat(
    session: Session,
    claim: Claim,
    *,
    iteration: int | None,
    iterations: int | None,
    eta_seconds: float | None,
    lease_seconds: float,
) -> bool:
    """Write progress and renew the lease in one statement; returns whether cancel was requested.

    ``iteration=None``: no progress to write yet (inputs still loading, the first
    iteration still running), only the lease renewed. Raises LeaseLostError if
    the worker no longer holds the job: it must stop.
    """
    now = utcnow()
    values: dict[str, Any] = {
        "lease_expires_at": now + timedelta(seconds=lease_seconds),
        "updated_at": now,
    }
    if iteration is not None and iterations is not None:
        values |= {
            "iteration": iteration,
            "iterations": iterations,
            "percent": progress_percent(iteration, iterations),
            "eta_seconds": eta_seconds,
        }
    row = guarded_update(
        session,
        claim.job_id,
        [],
        values,
        lease=claim,
        returning=(Job.cancel_requested,),
        webhook="progress" if iteration is not None else None,
    )
    return row is not None and bool(row[1])


def record_checkpoint(session: Session, claim: Claim, *, iteration: int, name: str) -> None:
    """The checkpoint ``name``, of the run after ``iteration``, is in storage: commit it.

    The row names it (the one a later attempt resumes from) and a ``checkpoint``
    event records it, in one transaction, only while ``claim`` holds the lease;
    LeaseLostError otherwise (and nothing changes).
    """
    guarded_update(
        session,
        claim.job_id,
        [],
        {"checkpoint_file": name},
        event=EventKind.CHECKPOINT,
        data={"iteration": iteration},
        lease=claim,
    )


def record_preview(session: Session, claim: Claim, *, name: str) -> None:
    """The preview ``name`` is in storage: the one served, while ``claim`` holds the lease.

    LeaseLostError otherwise (and nothing changes).
    """
    guarded_update(session, claim.job_id, [], {"preview_file": name}, lease=claim)


def record_resumed(session: Session, claim: Claim, *, iteration: int) -> None:
    """This attempt continues from a checkpoint taken after ``iteration``: a ``resumed``
    event, and the row's progress at that iteration (not the last one a dead attempt
    reported past it). LeaseLostError if the lease is gone (nothing changes)."""
    iterations = session.scalar(select(Job.iterations).where(Job.id == claim.job_id)) or 0
    guarded_update(
        session,
        claim.job_id,
        [],
        {
            "iteration": iteration,
            "percent": progress_percent(iteration, iterations),
            "eta_seconds": None,
        },
        event=EventKind.RESUMED,
        data={"iteration": iteration},
        lease=claim,
    )


def expire_lease_of_dead_worker(
    session: Session, job_id: uuid.UUID, *, worker: str, pid: int, hostname: str
) -> int | None:
    """The lease of pool process ``pid`` on ``hostname`` of worker ``worker`` (its node
    name), a process known to be dead, ends now; returns its attempt.

    For the worker's main process once it has reaped a pool process that died
    mid-job (SIGKILL, the OOM killer): the job need not wait for the lease to run
    out, the next claim retries it at once. Only that process's attempt: the one
    its ``claimed`` event (worker, pid and hostname) records, and only while the
    row still has that attempt under that owner. So neither a later attempt of
    the same worker (its restarted pool process) nor one of another process
    misconfigured under the same name is touched. None if the process no longer
    holds the job (another attempt claimed it after the lease expired, or it
    finished). A ``worker_lost`` event records it; the attempt counts as one that
    died.
    """
    claims = session.execute(
        select(JobEvent.attempt, JobEvent.data).where(
            JobEvent.job_id == job_id,
            JobEvent.kind == EventKind.CLAIMED.value,
            JobEvent.worker == worker,
        )
    ).all()
    attempts = [
        attempt
        for attempt, data in claims
        if (data or {}).get("pid") == pid and (data or {}).get("hostname") == hostname
    ]
    if not attempts:
        session.rollback()
        return None
    now = utcnow()
    ended = guarded_update(
        session,
        job_id,
        [Job.status == JobStatus.RUNNING, Job.lease_owner == worker, Job.attempts == max(attempts)],
        # updated_at at the expiry, like a lease that ran out: the reconciler re-sends it.
        {"lease_expires_at": now, "updated_at": now, "eta_seconds": None},
        event=EventKind.WORKER_LOST,
        attempt=None,
        worker=worker,
        data={"pid": pid, "hostname": hostname},
    )
    return None if ended is None else int(ended[0])
