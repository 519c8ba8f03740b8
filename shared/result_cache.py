"""The result cache: an exact repeat of a succeeded job is succeeded at once, computed by no one.

A job's ``cache_key`` is the sha256 over its input bytes (the content, then each
style in order, each after its length), the canonical JSON of its parameters
with every default filled in, ``ENGINE_VERSION`` and the identity of the
weights the workers use (``shared.weights_id``). Every job stores its key when
it is submitted. A later submit with the same key (and ``cache`` not false) is
created finished: ``succeeded``, ``cached``, its ``cached_from`` naming the
earlier job, its ``created`` and ``succeeded`` events committed with its row,
and a copy of that job's result among its own files (its inputs stored as any
job's), so that each job's retention stays its own. The earlier job is the
newest succeeded one with the key whose files are still there: of the same
client (``STYLEQUEUE_CACHE_SCOPE=client``, the default) or of any client
(``global``). One whose files are gone (retention, an admin, a store that lost
them) is passed over; with none left the job is queued and computed as any.

``create_from_cache`` is the lookup and the creation, called by the submit
(``shared.submissions.create_job``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from shared.db import CommitOutcomeUnknownError, Database
from shared.errors import NotFoundError
from shared.job_store import CopiedResult, insert_job
from shared.job_view import JobView
from shared.models import EventKind, Job, JobEvent, JobStatus
from shared.params import StyleParams
from shared.settings import CacheScope, Settings
from shared.storage import Storage, committed_result, result_file
from shared.webhooks import WebhookRequest
from shared.weights_id import weights_identity

log = logging.getLogger(__name__)

# Raise it with every change to the engine (worker/engine/) that changes the image a job
# with the same inputs and parameters makes: results computed before are then no repeat.
ENGINE_VERSION = 1
# How many earlier jobs with the key a submit tries, newest first, before it computes the
# job: each one passed over costs a read from the store that finds nothing.
MAX_CANDIDATES = 3
# The copied result's name among the new job's files: attempt 0, which no worker has.
CACHED_RESULT_FILE = result_file(0)


@dataclass(frozen=True)
class CacheRequest:
    """What a submit asks of the cache: whether to serve it (the form's ``cache``), from
    whose jobs (the scope), and the weights' identity (None: no cache in this process)."""

    serve: bool
    scope: CacheScope
    weights: str | None

    @classmethod
    def of(cls, settings: Settings, *, serve: bool = True) -> CacheRequest:
        return cls(serve=serve, scope=settings.cache_scope, weights=weights_identity(settings))


def cache_key(params: StyleParams, content: bytes, styles: Sequence[bytes], weights: str) -> str:
    """The sha256 that makes two jobs the same job (hex)."""
    digest = hashlib.sha256(b"stylequeue result cache\n")
    digest.update(f"engine {ENGINE_VERSION}\nweights {weights}\n".encode())
    canonical = json.dumps(params.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    digest.update(len(canonical).to_bytes(8, "big") + canonical.encode())
    for data in (content, *styles):
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


_FILES_DELETED = (
    select(JobEvent.id)
    .where(JobEvent.job_id == Job.id, JobEvent.kind == EventKind.FILES_DELETED)
    .exists()
)


def create_from_cache(
    session: Session,
    storage: Storage,
    job: JobView,
    files: Mapping[str, bytes],
    *,
    key: str,
    scope: CacheScope,
    idempotency_key: str | None,
    request_digest: str | None,
    db: Database | None = None,
    webhook: WebhookRequest | None = None,
) -> JobView | None:
    """Create ``job`` (a new queued job's view, with its input ``files``) finished, from the
    result of an earlier succeeded job with ``key``; None when there is none to copy.

    The copy and the inputs are stored durably before the row and its two events
    are committed, as for any submit; a failure removes the files again (but a
    commit whose outcome is unknown leaves them, as the submit does). An
    Idempotency-Key already taken is SQLAlchemy's ``IntegrityError``.
    """
    found = _copy_of_a_result(
        session, storage, key, job.client_id if scope == "client" else None, db
    )
    if found is None:
        return None
    source, data = found
    finished = dataclasses.replace(
        job,
        status=JobStatus.SUCCEEDED,
        iteration=job.iterations,
        percent=100.0,
        finished_at=job.created_at,
        cached=True,
    )
    copied = CopiedResult(source, CACHED_RESULT_FILE, {"cached_from": str(source)})
    try:
        storage.put_many(job.id, {**files, CACHED_RESULT_FILE: data})
        insert_job(
            session,
            finished,
            idempotency_key=idempotency_key,
            request_digest=request_digest,
            db=db,
            cache_key=key,
            copied=copied,
            webhook=webhook,  # its ``completed`` delivery is committed with it
        )
    except CommitOutcomeUnknownError:
        _rollback_quietly(session)  # the row may be in: its files stay
        raise
    except BaseException:
        _rollback_quietly(session)
        storage.delete_job_files(job.id)
        raise
    log.info("job %s: served from the result cache (a copy of job %s)", job.id, source)
    return finished


# The lookup every submit makes, on PostgreSQL prepared on the driver's fast path
# (``shared.db.ThreadConnections``): through the ORM, with the rollback after it, a miss
# cost ~1.1 ms. The same query as the Core one below.
_CANDIDATES_SQL = (
    "SELECT id, result_file FROM jobs WHERE cache_key = %s AND status = 'succeeded'"
    " AND NOT EXISTS (SELECT 1 FROM job_events WHERE job_events.job_id = jobs.id"
    " AND job_events.kind = 'files_deleted'){client}"
    f" ORDER BY created_at DESC LIMIT {MAX_CANDIDATES}"
)
_CANDIDATES_OF_ANY = _CANDIDATES_SQL.format(client="")
_CANDIDATES_OF_CLIENT = _CANDIDATES_SQL.format(client=" AND client_id = %s")


def _copy_of_a_result(
    session: Session,
    storage: Storage,
    key: str,
    client_id: int | None,
    db: Database | None = None,
) -> tuple[uuid.UUID, bytes] | None:
    """The newest succeeded job with ``key`` (of ``client_id``; None: any) whose result is
    still stored, and that result's bytes."""
    # Newest first, in the index's order (cache_key, status, created_at): no sort, however
    # many jobs have the key; the client's are filtered on the way.
    connections = None if db is None else db.thread_connections
    candidates: Sequence[tuple[uuid.UUID, str | None]]
    if connections is not None:
        if client_id is None:
            rows = connections.fetch_all(_CANDIDATES_OF_ANY, (key,))
        else:
            rows = connections.fetch_all(_CANDIDATES_OF_CLIENT, (key, client_id))
        candidates = [(uuid.UUID(str(source)), named) for source, named in rows]
    else:
        query = select(Job.id, Job.result_file).where(
            Job.cache_key == key, Job.status == JobStatus.SUCCEEDED, ~_FILES_DELETED
        )
        if client_id is not None:
            query = query.where(Job.client_id == client_id)
        candidates = [
            (source, named)
            for source, named in session.execute(
                query.order_by(Job.created_at.desc()).limit(MAX_CANDIDATES)
            ).all()
        ]
        session.rollback()  # no transaction held open while the store is read
    for source, named in candidates:
        try:
            return source, storage.get(source, committed_result(named))
        except NotFoundError:
            # Deleted (retention or an admin, its event not written yet) or lost by the
            # store: the next one, or the job is computed.
            log.info("job %s: its result is gone; not served from the cache", source)
    return None


def _rollback_quietly(session: Session) -> None:
    try:
        session.rollback()
    except SQLAlchemyError:
        log.debug("rollback failed", exc_info=True)
