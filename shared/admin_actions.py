"""What operators do to jobs, each action by an ``Operator`` whom the job's event and a
log line name: ``cancel_job``, ``retry_job`` (the transition itself is
``shared.jobs.retry_job``, beside the others), ``delete_job_files``, and the
bulk actions over a filter (``bulk_retry_failed``, ``bulk_cancel_queued``: at
most ``BULK_LIMIT`` jobs each, every job through the same single-job action).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy.orm import Session

from shared import jobs
from shared.admin import JobFilters, list_jobs
from shared.errors import ConflictError, NotFoundError
from shared.job_store import files_deleted, get_job
from shared.logging import job_event
from shared.models import EventKind, Job, JobEvent, JobStatus
from shared.storage import Storage
from shared.submissions import Enqueue

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Operator:
    """The admin who acts: the name and id of the admin key's client (the page's login)."""

    name: str
    client_id: int

    def event_data(self) -> dict[str, Any]:
        """What the job's event records of who did it."""
        return {"by": self.name, "admin_client_id": self.client_id}


# ---------------------------------------------------------------- actions


def cancel_job(session: Session, job_id: uuid.UUID, *, by: Operator) -> Job:
    """Cancel any client's queued or running job (a running one stops at its next
    heartbeat); a finished job is returned unchanged. NotFoundError when unknown.
    The event names the admin; so does a log line, when something changed."""
    before = get_job(session, job_id, client_id=None)
    asked, status = before.cancel_requested, before.status
    job = jobs.cancel_job(session, job_id, client_id=None, by=by.event_data())
    if job.status is not status or job.cancel_requested is not asked:
        _log(job, "cancel_requested", by, f"cancel requested; now {job.status.value}")
    return job


def retry_job(session: Session, job_id: uuid.UUID, enqueue: Enqueue, *, by: Operator) -> Job:
    """Queue a failed or canceled job again (``shared.jobs.retry_job``), naming the admin
    in its ``retried`` event and a log line."""
    before = get_job(session, job_id, client_id=None)
    previous, error_code = before.status.value, before.error_code
    job = jobs.retry_job(session, job_id, enqueue, by=by.event_data())
    _log(job, "retried", by, f"retried (was {previous})", previous=previous, error_code=error_code)
    return job


def delete_job_files(session: Session, storage: Storage, job_id: uuid.UUID, *, by: Operator) -> Job:
    """Remove a job's files (inputs, preview, checkpoint, result) and record ``files_deleted``
    with the admin's name (the client's ``/result`` then says an operator deleted them).

    Only for a finished job: a queued or running one is a ConflictError
    ``job_not_finished`` (cancel it first). Idempotent: the event and the log line
    once. NotFoundError when unknown.
    """
    job = get_job(session, job_id, client_id=None)
    if not job.status.is_finished:
        raise ConflictError(
            f"job {job_id} is {job.status.value}; cancel it first, files go only once it ended",
            code="job_not_finished",
            details={"status": job.status.value},
        )
    already = files_deleted(session, job_id)
    session.rollback()  # no transaction open while deleting files
    storage.delete_job_files(job_id)
    if not already:
        session.add(JobEvent(job_id=job_id, kind=EventKind.FILES_DELETED, data=by.event_data()))
        session.commit()
    job = get_job(session, job_id, client_id=None)
    if not already:
        _log(job, "files_deleted", by, "files deleted")
    return job


def _log(job: Job, event: str, by: Operator, what: str, **fields: Any) -> None:
    log.info(
        "job %s %s by admin %s",
        job.id,
        what,
        by.name,
        extra=job_event(
            event,
            job.id,
            by=by.name,
            admin_client_id=by.client_id,
            client_id=job.client_id,
            status=job.status.value,
            **fields,
        ),
    )


# ---------------------------------------------------------------- bulk

BULK_LIMIT = 1000  # jobs one bulk action changes at most; the rest wait for the next


@dataclass(frozen=True)
class BulkResult:
    """What a bulk action did: how many jobs it changed, which it left and why
    (error code: count), and whether more matched than one action takes."""

    action: str  # "retry" or "cancel"
    done: int
    skipped: dict[str, int]
    more: bool


def bulk_targets(filters: JobFilters, action: str) -> JobFilters:
    """The jobs a bulk action is for: the failed ones of ``filters`` (a retry), or the
    queued ones (a cancel); the filters' own statuses do not matter."""
    status = {"retry": JobStatus.FAILED, "cancel": JobStatus.QUEUED}[action]
    return replace(filters, statuses=(status,))


def bulk_retry_failed(
    session: Session,
    filters: JobFilters,
    enqueue: Enqueue,
    *,
    by: Operator,
    limit: int = BULK_LIMIT,
) -> BulkResult:
    """Retry every failed job matching ``filters`` (newest first, at most ``limit``), each
    as ``retry_job`` does; a job that cannot be retried (its files deleted, retried
    meanwhile) is skipped and counted by its error code."""
    return _bulk(
        session,
        filters,
        "retry",
        limit,
        by,
        lambda job_id: retry_job(session, job_id, enqueue, by=by),
    )


def bulk_cancel_queued(
    session: Session, filters: JobFilters, *, by: Operator, limit: int = BULK_LIMIT
) -> BulkResult:
    """Cancel every queued job matching ``filters`` (newest first, at most ``limit``), each
    as ``cancel_job`` does; one that a worker claimed meanwhile is asked to stop."""
    return _bulk(
        session, filters, "cancel", limit, by, lambda job_id: cancel_job(session, job_id, by=by)
    )


def _bulk(
    session: Session,
    filters: JobFilters,
    action: str,
    limit: int,
    by: Operator,
    act: Callable[[uuid.UUID], object],
) -> BulkResult:
    page = list_jobs(session, bulk_targets(filters, action), limit=limit, cursor=None)
    session.rollback()  # each job in a transaction of its own
    done, skipped = 0, dict[str, int]()
    for job in page.items:
        try:
            act(job.id)
        except (ConflictError, NotFoundError) as exc:
            session.rollback()
            skipped[exc.code] = skipped.get(exc.code, 0) + 1
        else:
            done += 1
    result = BulkResult(action, done, skipped, page.next_cursor is not None)
    log.info(
        "bulk %s by admin %s: %d done, %d skipped%s",
        action,
        by.name,
        done,
        sum(skipped.values()),
        "; more match" if result.more else "",
        extra={
            "event": f"bulk_{action}",
            "by": by.name,
            "admin_client_id": by.client_id,
            "done": done,
            "skipped": skipped,
            "more": result.more,
        },
    )
    return result
