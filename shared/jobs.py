"""The job state machine's transitions: one function for each row of
``shared.models.TRANSITIONS`` (the table and its diagram are beside ``JobStatus``),
called by both api/ and worker/.

Every change of a job's row goes through ``guarded_update``: one conditional
UPDATE on the row's current state, its event, the commit; so two processes
racing for the same job cannot both win. A worker claims a job only if it is
queued (or running under an expired lease: a new attempt, its number
incremented), and writes an outcome only while it still holds the lease (same
owner, same attempt number); a write that finds the lease gone raises
``LeaseLostError`` and changes nothing. What a lease holder writes without
changing the status (renewals, progress, committed files) is ``shared.leases``;
the reconciler's sweeps are ``shared.reconciler``; a submit is
``shared.submissions``.

A little over 400 lines, on purpose: the transitions of the table are here, side by
side, so that a change of the life cycle is read and made in one file. One sits
apart: a deadline's cancel (``shared.deadlines``) takes the table's cancel edges
with an error of its own, for the reconciler's sweep and the claim to call.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, true
from sqlalchemy.orm import Session, aliased

from shared.client_limits import running_slot_condition
from shared.deadlines import cancel_past_deadline, deadline_error
from shared.errors import ConflictError
from shared.job_store import files_deleted, get_job, guarded_update
from shared.models import TRANSITIONS, EventKind, Job, JobEvent, JobStatus, Transition, utcnow
from shared.stats import forget_cached_counts
from shared.submissions import Enqueue, enqueue_or_leave_queued


@dataclass(frozen=True)
class Claim:
    """A worker's hold on a job: valid while the row has this owner and attempt number."""

    job_id: uuid.UUID
    worker: str
    attempt: int
    params: dict[str, Any]
    n_styles: int
    # The committed checkpoint and preview when the claim was made (None: none yet).
    # Only the lease holder changes them, so the holder knows them from here on.
    checkpoint_file: str | None = None
    preview_file: str | None = None
    # Asked before this attempt began (while an earlier one's worker was dying): stop at once.
    cancel_requested: bool = False
    # Canceled (deadline_exceeded) if not finished by then; None: no deadline.
    deadline_at: datetime | None = None
    # Its estimated peak memory, bytes (shared.memory_estimate); None: not estimated.
    memory_estimate: int | None = None
    # Its output's "WxH", which a batch's jobs share (worker.batch_runner); None: unknown.
    batch_shape: str | None = None


# ---------------------------------------------------------------- client and admin side


def cancel_job(
    session: Session,
    job_id: uuid.UUID,
    *,
    client_id: int | None,
    by: dict[str, Any] | None = None,
) -> Job:
    """Cancel a job; idempotent. Queued: canceled at once. Running: the worker is told to stop
    (a follower, which no worker runs, is canceled at once; its leader goes on).

    A finished job is returned unchanged. ``by``: who asked, when not the job's
    client (an admin's name and client id), for the event's data.
    """
    get_job(session, job_id, client_id=client_id)  # 404 before anything changes
    now = utcnow()
    canceled = guarded_update(
        session,
        job_id,
        [],
        {"finished_at": now, "updated_at": now},
        transition=TRANSITIONS.cancel_queued,
        data={"while": "queued", **(by or {})},
    )
    if canceled is None:  # a follower shows its leader's running: it ends alone, at once
        canceled = guarded_update(
            session,
            job_id,
            [Job.follows.is_not(None)],
            {"finished_at": now, "updated_at": now, "eta_seconds": None},
            transition=TRANSITIONS.cancel_follower,
            data={"while": "running", **(by or {})},
        )
    if canceled is None:
        guarded_update(
            session,
            job_id,
            [Job.status == JobStatus.RUNNING, ~Job.cancel_requested],
            {"cancel_requested": True, "updated_at": now},
            event=EventKind.CANCEL_REQUESTED,
            data=by,
        )
    job = get_job(session, job_id, client_id=client_id)
    session.refresh(job)
    return job


def retry_job(
    session: Session, job_id: uuid.UUID, enqueue: Enqueue, *, by: dict[str, Any] | None = None
) -> Job:
    """failed | canceled → queued (an admin's): the error cleared, the next claim a new
    attempt, its history kept with a ``retried`` event; then enqueued as a submit is.

    ConflictError ``job_not_retryable`` for any other status (or when the job changed
    while being retried), ``job_files_deleted`` when its input files are gone.
    NotFoundError when unknown. ``started_at`` and ``finished_at`` are cleared: they
    describe the new run (the timeline keeps the old). ``by``: the admin who asked
    (name and client id), for the event's data.
    """
    job = get_job(session, job_id, client_id=None)
    status = job.status
    if status not in TRANSITIONS.retry.sources:
        raise ConflictError(
            f"job {job_id} is {status.value}; only a failed or canceled job can be retried",
            code="job_not_retryable",
            details={"status": status.value},
        )
    if files_deleted(session, job_id):
        raise ConflictError(
            f"job {job_id}: its files were deleted, it cannot run again",
            code="job_files_deleted",
        )
    previous = {"status": status.value, "error_code": job.error_code}
    now = utcnow()
    retried = guarded_update(
        session,
        job_id,
        [Job.status == status, Job.attempts == job.attempts],  # as read: the event says so
        {
            "error_code": None,
            "error_message": None,
            "cancel_requested": False,
            "lease_owner": None,
            "lease_expires_at": None,
            "iteration": 0,
            "percent": 0.0,
            "eta_seconds": None,
            "started_at": None,
            "finished_at": None,
            "deadline_at": None,  # an admin's retry runs it whatever its client's deadline was
            "updated_at": now,
        },
        transition=TRANSITIONS.retry,
        attempt=job.attempts,
        data={**{k: v for k, v in previous.items() if v is not None}, **(by or {})},
    )
    if retried is None:  # someone else retried it first
        now_status = get_job(session, job_id, client_id=None).status
        raise ConflictError(
            f"job {job_id} changed while it was being retried; it is {now_status.value} now",
            code="job_not_retryable",
            details={"status": now_status.value},
        )
    forget_cached_counts()  # the statistics' all-time counts moved
    enqueue_or_leave_queued(session, job_id, enqueue)
    session.refresh(job)
    return job


# ---------------------------------------------------------------- worker side


def claim_job(
    session: Session,
    job_id: uuid.UUID,
    *,
    worker: str,
    lease_seconds: float,
    max_attempts: int | None = None,
    pid: int | None = None,
    hostname: str | None = None,
    max_running: int = 0,
    memory_budget: int | None = None,
    on_claim: Callable[[Session], None] | None = None,
    event_data: dict[str, Any] | None = None,
) -> Claim | None:
    """Take a queued job (or one whose lease expired) for ``worker``; None if it is not claimable.

    None covers a job that is running under a live lease, finished, or unknown:
    a redelivered message for it is a no-op. With ``max_attempts``, a job whose
    workers died that many times is not claimable either: ``fail_exhausted_job``
    ends it. ``worker`` (the worker's node name) is the lease owner; ``pid`` and
    ``hostname``, the process that claims, go in the ``claimed`` event's data,
    which is how ``shared.leases.expire_lease_of_dead_worker`` finds the attempt
    of a pool process that died.

    Nor is a job of a client that has its maximum of jobs running
    (``shared.client_limits``; ``max_running``: the default for a client without
    its own; 0: none): it stays queued. Nor one whose memory estimate is over
    ``memory_budget``, the worker's (``fits_memory``; None: any fits). A job past its deadline is canceled
    (``deadline_exceeded``) instead of claimed. What ``on_claim`` writes is committed
    with the claim (the fair order's tag, ``shared.fair_share``). ``event_data``: more for
    the ``claimed`` event (the job a batch's member runs with).
    """
    now = utcnow()
    conditions = [claimable(now), or_(Job.deadline_at.is_(None), Job.deadline_at > now)]
    if max_attempts is not None:
        conditions.append(attempts_left(max_attempts))
    conditions.append(fits_memory(memory_budget))
    conditions.append(
        running_slot_condition(session, job_id, default_max_running=max_running, now=now)
    )
    claimed = guarded_update(
        session,
        job_id,
        conditions,
        {
            "attempts": Job.attempts + 1,
            "worker": worker,
            "lease_owner": worker,
            "lease_expires_at": now + timedelta(seconds=lease_seconds),
            "started_at": func.coalesce(Job.started_at, now),
            "updated_at": now,
        },
        transition=TRANSITIONS.claim,
        attempt=None,
        worker=worker,
        data={
            key: value for key, value in (("pid", pid), ("hostname", hostname)) if value is not None
        }
        | (event_data or {}),
        returning=(
            Job.params,
            Job.n_styles,
            Job.checkpoint_file,
            Job.preview_file,
            Job.cancel_requested,
            Job.deadline_at,
            Job.memory_estimate,
            Job.batch_shape,
        ),
        also=on_claim,
    )
    if claimed is None:
        cancel_past_deadline(session, job_id)
        return None
    attempt, params, n_styles, checkpoint, preview, cancel, deadline, estimate, shape = claimed
    return Claim(
        job_id,
        worker,
        attempt,
        dict(params),
        n_styles,
        checkpoint,
        preview,
        bool(cancel),
        deadline,
        estimate,
        shape,
    )


def fits_memory(budget: int | None) -> ColumnElement[bool]:
    """A job a worker with ``budget`` bytes may take: its estimate fits (or it has none)."""
    if budget is None:
        return true()
    return or_(Job.memory_estimate.is_(None), Job.memory_estimate <= budget)


def claimable(now: datetime) -> ColumnElement[bool]:
    """Queued, or running under a lease that ran out (its worker died or was cut off); never
    a follower (it shares another job's run: ``shared.follows``)."""
    return and_(
        Job.follows.is_(None),
        or_(
            Job.status == JobStatus.QUEUED,
            and_(Job.status == JobStatus.RUNNING, Job.lease_expires_at < now),
        ),
    )


def died_attempts() -> ColumnElement[int]:
    """Attempts that ended without handing the job back or finishing it: their worker died.

    Every claim counts one attempt; one that handed the job back on a shutdown
    has a ``released`` event. A finished attempt ends the job, so on a claimable
    row (queued, or running under an expired lease) every other attempt died,
    the current one included when its lease expired. An admin's retry (a
    ``retried`` event, with the attempt count it found) starts the count afresh.
    """
    retry = aliased(JobEvent)
    retried_at = (
        select(func.coalesce(func.max(retry.attempt), 0))
        .where(retry.job_id == Job.id, retry.kind == EventKind.RETRIED.value)
        .scalar_subquery()
    )
    retried_since = (
        select(retry.id)
        .where(
            retry.job_id == JobEvent.job_id,
            retry.kind == EventKind.RETRIED.value,
            retry.attempt >= JobEvent.attempt,
        )
        .exists()
    )
    released = (
        select(func.count(JobEvent.id))
        .where(
            JobEvent.job_id == Job.id,
            JobEvent.kind == EventKind.RELEASED.value,
            ~retried_since,  # released before the last retry: counted in retried_at
        )
        .scalar_subquery()
    )
    return Job.attempts - retried_at - released


def attempts_left(max_attempts: int) -> ColumnElement[bool]:
    """Fewer than ``max_attempts`` of the job's attempts died. Died attempts are never more
    than attempts, so a row with fewer attempts than that is let through on its own
    column, and only the others (hardly any) cost ``died_attempts``' subqueries."""
    return or_(Job.attempts < max_attempts, died_attempts() < max_attempts)


def finish_job(
    session: Session,
    claim: Claim,
    *,
    result_file: str | None = None,
    event_data: Mapping[str, str | int | float] | None = None,
) -> None:
    """running → succeeded, naming ``result_file`` (already stored) as the job's result.

    LeaseLostError if not held: then the row is unchanged and the file is no result.
    Without ``result_file`` the result is the fixed-name one jobs used to have.
    ``event_data``: more for the ``succeeded`` event (where the style targets came from).
    """
    values: dict[str, Any] = {"eta_seconds": 0.0}
    if result_file is not None:
        values["result_file"] = result_file
    values |= {"iteration": Job.iterations, "percent": 100.0}
    _end(session, claim, TRANSITIONS.finish, values, event_data)


def fail_job(
    session: Session,
    claim: Claim,
    *,
    code: str,
    message: str,
    progress: tuple[int, int] | None = None,
) -> None:
    """running → failed, with an error code and message the client can read.

    ``progress``: (iteration, iterations) where the engine stopped, written with it.
    """
    values: dict[str, Any] = {"error_code": code, "error_message": message}
    if progress is not None:
        iteration, iterations = progress
        values |= {"iteration": iteration, "percent": progress_percent(iteration, iterations)}
    _end(session, claim, TRANSITIONS.fail, values)


def cancel_running_job(
    session: Session, claim: Claim, *, iteration: int, deadline_passed: bool = False
) -> None:
    """running → canceled, once the worker has stopped the engine for a cancel request
    (``deadline_passed``: for its deadline, with the ``deadline_exceeded`` error)."""
    values: dict[str, Any] = {"iteration": iteration}
    if deadline_passed:
        values |= deadline_error(claim.deadline_at)
    _end(session, claim, TRANSITIONS.cancel_running, values)


def _end(
    session: Session,
    claim: Claim,
    transition: Transition,
    values: dict[str, Any],
    event_data: Mapping[str, str | int | float] | None = None,
) -> None:
    # The outcome's values are its event's data too (but for SQL expressions).
    now = utcnow()
    guarded_update(
        session,
        claim.job_id,
        [],
        {
            **values,
            "finished_at": now,
            "updated_at": now,
            "lease_owner": None,
            "lease_expires_at": None,
            "checkpoint_file": None,  # a finished job is never resumed
        },
        transition=transition,
        lease=claim,
        data={
            **{k: v for k, v in values.items() if isinstance(v, str | int | float)},
            **(event_data or {}),
        },
    )


def progress_percent(iteration: int, iterations: int) -> float:
    """Iterations done as a percentage, 0..100, rounded to 0.01."""
    if iterations <= 0:
        return 0.0
    return round(100.0 * min(max(iteration, 0), iterations) / iterations, 2)


def release_job(
    session: Session,
    claim: Claim,
    *,
    iteration: int,
    checkpoint_file: str | None = None,
    reason: str | None = None,
) -> None:
    """running → queued: a worker shutting down hands the job back after checkpointing it.

    Only while holding the lease (LeaseLostError otherwise). The attempt count
    stays as it is, so the next claim is a new attempt that resumes from the
    checkpoint; the ``released`` event records where this attempt stopped. With
    ``checkpoint_file`` (stored already), the row names it in the same statement.
    ``reason``: why, when it is not a shutdown (an error code, in the event's data).
    """
    committed = {"checkpoint_file": checkpoint_file} if checkpoint_file is not None else {}
    guarded_update(
        session,
        claim.job_id,
        [],
        {
            "lease_owner": None,
            "lease_expires_at": None,
            "eta_seconds": None,
            "updated_at": utcnow(),
            **committed,
        },
        transition=TRANSITIONS.release,
        lease=claim,
        data={"iteration": iteration, **({"reason": reason} if reason else {})},
    )


# ---------------------------------------------------------------- the attempts cap


@dataclass(frozen=True)
class Exhausted:
    """A job failed with ``too_many_attempts``: its workers died ``died`` times."""

    job_id: uuid.UUID
    attempts: int
    died: int
    last_worker: str | None
    message: str


TOO_MANY_ATTEMPTS = "too_many_attempts"


def fail_exhausted_job(
    session: Session, job_id: uuid.UUID, *, max_attempts: int
) -> Exhausted | None:
    """Give up on a claimable job whose workers died ``max_attempts`` times: it fails
    (``too_many_attempts``) instead of being retried.

    None if the job is not claimable or has attempts left. The UPDATE is
    conditional on the status and attempt number read, so a job that a worker
    claims (or hands back) meanwhile is left alone. The caller removes the
    job's checkpoint, as for any failure.
    """
    now = utcnow()
    # One statement: the row and its released count from the same snapshot.
    row = session.execute(
        select(Job.status, Job.attempts, Job.worker, died_attempts()).where(
            Job.id == job_id, claimable(now)
        )
    ).one_or_none()
    if row is None or row[3] < max_attempts:
        session.rollback()
        return None
    status, attempts, last_worker, died = row
    message = (
        f"gave up after {died} attempt{'s' if died != 1 else ''} whose worker died "
        f"without finishing (the last on {last_worker or 'an unknown worker'}); "
        f"STYLEQUEUE_MAX_ATTEMPTS is {max_attempts}"
    )
    failed = guarded_update(
        session,
        job_id,
        [Job.status == status, Job.attempts == attempts, claimable(now)],
        {
            "error_code": TOO_MANY_ATTEMPTS,
            "error_message": message,
            "eta_seconds": None,
            "lease_owner": None,
            "lease_expires_at": None,
            "checkpoint_file": None,
            "finished_at": now,
            "updated_at": now,
        },
        transition=TRANSITIONS.give_up,
        attempt=attempts,
        data={
            "error_code": TOO_MANY_ATTEMPTS,
            "error_message": message,
            "died": died,
            "last_worker": last_worker,
        },
    )
    if failed is None:
        return None
    return Exhausted(job_id, attempts, died, last_worker, message)
