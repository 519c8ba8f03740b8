"""A job submitted: its input files stored durably, its row committed, then its id sent.

``create_job`` is the submit's rule (idempotency, files before the row, the row
before the message); ``enqueue_or_leave_queued`` sends a committed job's id,
and records an ``enqueue_failed`` event when the broker is down (the reconciler
sends it later). A retry enqueues through it too.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from shared import follows, result_cache
from shared.db import CommitOutcomeUnknownError, Database
from shared.job_store import find_by_idempotency_key, insert_job
from shared.job_view import JobView
from shared.models import EventKind, JobEvent, JobStatus, utcnow
from shared.params import StyleParams
from shared.storage import CONTENT_FILE, Storage, style_file
from shared.webhooks import WebhookRequest

log = logging.getLogger(__name__)

Enqueue = Callable[[uuid.UUID], None]


def create_job(
    session: Session,
    storage: Storage,
    *,
    client_id: int,
    params: StyleParams,
    content: bytes,
    styles: Sequence[bytes],
    idempotency_key: str | None,
    enqueue: Enqueue,
    db: Database | None = None,
    request_digest: str | None = None,
    deadline_at: datetime | None = None,
    warnings: Sequence[dict[str, str]] = (),
    cache: result_cache.CacheRequest | None = None,
    webhook: WebhookRequest | None = None,
    priority: int = 0,
    queue_name: str = "",
    memory_estimate: int | None = None,
    batch_shape: str | None = None,
) -> tuple[JobView, bool]:
    """Store a validated job durably, then enqueue its id. Returns (job, created).

    The input files are fsync'ed and the row committed before the id goes to
    Redis. If the enqueue fails the job stays queued for the reconciler: the
    client has its 202 either way. With an ``idempotency_key`` already used by
    this client, the original job is returned and nothing is created. With
    ``db`` (the API's ``Database``) the row goes in on its fastest path
    (``shared.job_store.insert_job``); else through ``session``.
    ``deadline_at``: when the job is canceled if not finished (``Cancel-After``).
    ``request_digest`` is kept on the row, for a replay with the key to match;
    ``warnings`` too (``shared.input_warnings``, as dicts), for every reader of the job.
    ``cache``: the job's result cache key is stored with it, and unless
    ``cache.serve`` is false an exact repeat of an earlier succeeded job is created
    succeeded at once, from that job's result, and sent to no worker
    (``shared.result_cache``); None: no key, no lookup. Not served, a job identical to
    one queued or running follows it instead of being sent (``shared.follows``). ``webhook``: committed with the
    row (``shared.webhooks``).
    """
    if idempotency_key is not None:
        existing = find_by_idempotency_key(session, client_id, idempotency_key)
        if existing is not None:
            return JobView.of(existing), False
    now = utcnow()
    job = JobView(
        id=uuid.uuid4(),
        client_id=client_id,
        status=JobStatus.QUEUED,
        params=params.model_dump(mode="json"),
        iteration=0,
        iterations=params.iterations,
        percent=0.0,
        eta_seconds=None,
        attempts=0,
        worker=None,
        error_code=None,
        error_message=None,
        created_at=now,
        started_at=None,
        finished_at=None,
        n_styles=len(styles),
        preview_file=None,
        cached=False,
        deadline_at=deadline_at,
        warnings=list(warnings),
        follows=None,
        priority=priority,  # its order among the client's queued jobs (shared.fair_share)
        memory_estimate=memory_estimate,  # claimed only by a worker it fits (shared.memory_estimate)
    )
    files = {CONTENT_FILE: content} | {style_file(i): data for i, data in enumerate(styles)}
    key = None
    if cache is not None and cache.weights is not None:
        key = result_cache.cache_key(params, content, styles, cache.weights)
        if cache.serve:
            try:
                cached = result_cache.create_from_cache(
                    session,
                    storage,
                    job,
                    files,
                    key=key,
                    scope=cache.scope,
                    idempotency_key=idempotency_key,
                    request_digest=request_digest,
                    db=db,
                    webhook=webhook,
                )
            except IntegrityError as exc:
                return _job_of_key(session, client_id, idempotency_key, exc), False
            if cached is not None:
                return cached, True
            # An identical job queued or running: this one shares its run (shared.follows).
            leader = follows.find_leader(
                session, key, client_id if cache.scope == "client" else None, db
            )
            if leader is not None:
                job = dataclasses.replace(job, follows=leader)
    try:
        storage.put_many(job.id, files)
        insert_job(
            session,
            job,
            idempotency_key=idempotency_key,
            request_digest=request_digest,
            db=db,
            cache_key=key,
            webhook=webhook,
            queue_name=queue_name,
            batch_shape=batch_shape,
        )
    except IntegrityError as exc:
        session.rollback()
        storage.delete_job_files(job.id)
        return _job_of_key(session, client_id, idempotency_key, exc), False
    except CommitOutcomeUnknownError:
        # The row may be in: its files stay (a job without its inputs would fail).
        # If it is not, they are files no job refers to.
        _rollback_quietly(session)
        raise
    except BaseException:
        _rollback_quietly(session)
        storage.delete_job_files(job.id)
        raise
    if job.follows is None:
        enqueue_or_leave_queued(session, job.id, enqueue)
    elif not follows.is_live(session, job.follows, db):
        # Its leader ended between the lookup and the commit: settled now, not at the
        # reconciler's next run (its own settle may have run before this row was in).
        send = functools.partial(enqueue_or_leave_queued, session, enqueue=enqueue)
        follows.settle_or_leave(session, storage, job.follows, send)
    return job, True


def _job_of_key(
    session: Session, client_id: int, key: str | None, error: IntegrityError
) -> JobView:
    """The job another request with the same Idempotency-Key committed first (else ``error``)."""
    existing = None if key is None else find_by_idempotency_key(session, client_id, key)
    if existing is None:
        raise error
    return JobView.of(existing)


def _rollback_quietly(session: Session) -> None:
    # With the database gone the rollback fails too: the first error is the one to raise.
    try:
        session.rollback()
    except SQLAlchemyError:
        log.debug("rollback failed", exc_info=True)


def enqueue_or_leave_queued(session: Session, job_id: uuid.UUID, enqueue: Enqueue) -> None:
    """Send the id of ``job_id`` (committed, queued) to the workers; if the broker is down,
    record ``enqueue_failed`` and leave the job for the reconciler, which re-sends it."""
    try:
        enqueue(job_id)
    except Exception as exc:  # the broker is down: the reconciler will enqueue it later
        log.warning("job %s committed but not enqueued (%s); left for the reconciler", job_id, exc)
        try:
            session.add(
                JobEvent(job_id=job_id, kind=EventKind.ENQUEUE_FAILED, data={"error": repr(exc)})
            )
            session.commit()
        except Exception:
            session.rollback()
            log.exception("could not record the failed enqueue of job %s", job_id)
