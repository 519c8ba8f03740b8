"""Each client's limits, the one rule for them: how fast it may submit, how many of its
jobs may wait, and how many may run at once.

A client's own values (``api_clients``: ``stylequeue keys create|update``) win;
a null one is the service's default (``STYLEQUEUE_RATE_LIMIT``,
``STYLEQUEUE_RATE_BURST``, ``STYLEQUEUE_MAX_QUEUED``, ``STYLEQUEUE_MAX_RUNNING``);
0 is no limit. Every count is the database's or Redis's, never a process's, so
the limits hold across any number of API processes and workers.

- A submit (``check_submit``, before anything is stored): first the rate (a token
  bucket in Redis, ``shared.rate_limit``: ``burst`` at once, then ``rate`` a
  second), then the client's queued jobs. Over either is a 429
  (``rate_limited``, ``too_many_queued``) and stores nothing. A Redis that does
  not answer lets the submit through (fail open, with a log line): the
  database is the truth, and a submit must not fail because a counter is out of
  reach.
- A claim (``running_slot_condition``, in ``shared.jobs.claim_job``): a worker
  does not take a job of a client that already has ``max_running`` jobs
  running under a live lease; the job stays queued. When one of that client's
  jobs ends or is handed back, ``jobs_to_offer`` names its oldest queued jobs,
  one per free slot, for the worker to send again; the reconciler's re-send of
  queued jobs is the backstop.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass
from datetime import datetime

import redis
from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.orm import Session, aliased

from shared.db import Database
from shared.errors import TooManyRequestsError
from shared.models import ApiClient, Job, JobStatus
from shared.rate_limit import RateBucket, RateDecision
from shared.settings import Settings

log = logging.getLogger(__name__)

# A 429 for too many queued jobs cannot know when one will start: ask again after this.
QUEUED_RETRY_AFTER_SECONDS = 5
REDIS_DOWN_LOG_SECONDS = 10.0  # the fail-open warning, at most once this often per process


@dataclass(frozen=True)
class ClientLimits:
    """One client's limits in force; 0: none."""

    rate: float  # submits per second, sustained
    burst: int  # submits at once
    max_queued: int
    max_running: int

    @property
    def rate_limited(self) -> bool:
        return self.rate > 0 and self.burst > 0


def limits_of(row: ApiClient | None, settings: Settings) -> ClientLimits:
    """The limits in force for a client row (None: an unknown client, the defaults)."""

    def pick(own: float | int | None, default: float | int) -> float | int:
        return default if own is None else own

    return ClientLimits(
        rate=float(pick(row.rate_limit if row else None, settings.rate_limit)),
        burst=int(pick(row.rate_burst if row else None, settings.rate_burst)),
        max_queued=int(pick(row.max_queued if row else None, settings.max_queued)),
        max_running=int(pick(row.max_running if row else None, settings.max_running)),
    )


def read_limits(session: Session, client_id: int, settings: Settings) -> ClientLimits:
    """The limits in force for ``client_id``, read from its row now."""
    return limits_of(session.get(ApiClient, client_id), settings)


@dataclass(frozen=True)
class SubmitQuota:
    """Where a client stands after a submit was let through (or refused): for the headers."""

    limits: ClientLimits
    rate: RateDecision | None  # None: no rate limit, or Redis did not answer
    queued: int | None  # its queued jobs, this one included; None: not counted


def check_submit(
    session: Session,
    client_id: int,
    limits: ClientLimits,
    bucket: RateBucket,
    db: Database | None = None,
) -> SubmitQuota:
    """Let a submit through or raise ``TooManyRequestsError`` (429), before anything is stored.

    The rate first (it protects the database from a runaway client), then the
    queued jobs. Concurrent submits of one client may each see the same count,
    so its queue may pass ``max_queued`` by as many as it submits at the same
    instant (the rate's burst bounds that). ``db``: the count goes on its fastest path.
    """
    rate = _take(bucket, client_id, limits) if limits.rate_limited else None
    if rate is not None and not rate.allowed:
        retry = max(1, math.ceil(rate.retry_after_seconds))
        raise TooManyRequestsError(
            f"too many submits: at most {limits.burst} at once and {limits.rate:g} a second "
            f"for this key; retry in {retry} s",
            code="rate_limited",
            retry_after=retry,
            quota=SubmitQuota(limits, rate, None),
            details={"limit": "rate", "rate": limits.rate, "burst": limits.burst},
        )
    queued = None
    if limits.max_queued > 0:
        # Counted up to the limit only: the cost stays that of ``max_queued`` rows, however
        # long a queue grew (a limit lowered since).
        queued = count_jobs(session, client_id, JobStatus.QUEUED, db, up_to=limits.max_queued)
        if queued >= limits.max_queued:
            raise TooManyRequestsError(
                f"too many queued jobs: this key has {limits.max_queued} or more waiting, "
                f"at most {limits.max_queued}; retry once some have started",
                code="too_many_queued",
                retry_after=QUEUED_RETRY_AFTER_SECONDS,
                quota=SubmitQuota(limits, rate, queued),
                details={"limit": "max_queued", "max_queued": limits.max_queued},
            )
        queued += 1
    return SubmitQuota(limits, rate, queued)


_redis_down_logged = 0.0


def _take(bucket: RateBucket, client_id: int, limits: ClientLimits) -> RateDecision | None:
    global _redis_down_logged
    try:
        return bucket.take(client_id, rate=limits.rate, burst=limits.burst)
    except redis.RedisError as exc:
        now = time.monotonic()
        if now - _redis_down_logged >= REDIS_DOWN_LOG_SECONDS:
            _redis_down_logged = now
            log.warning(
                "rate limit not checked: Redis does not answer (%s); submits are let through",
                exc,
                extra={"event": "rate_limit_unavailable"},
            )
        return None


# Every submit counts the client's queued jobs: on PostgreSQL a prepared statement on the
# driver's fast path (``shared.db.ThreadConnections``); through the ORM it cost ~0.8 ms.
_COUNT_UP_TO_SQL = (
    "SELECT count(*) FROM (SELECT 1 FROM jobs WHERE client_id = %s AND status = %s"
    " LIMIT %s) AS counted"
)


def count_jobs(
    session: Session, client_id: int, status: JobStatus, db: Database | None, *, up_to: int
) -> int:
    """How many of the client's jobs have ``status`` now (``ix_jobs_client_status``), or
    ``up_to`` when there are at least that many; with ``db`` on PostgreSQL straight on
    the driver, else through ``session``."""
    connections = None if db is None else db.thread_connections
    if connections is not None:
        row = connections.fetch_one(_COUNT_UP_TO_SQL, (client_id, status.value, up_to))
        return int(row[0]) if row is not None else 0
    rows = select(Job.id).where(Job.client_id == client_id, Job.status == status).limit(up_to)
    found = session.scalar(select(func.count()).select_from(rows.subquery()))
    return int(found or 0)


# ---------------------------------------------------------------- where jobs start


def running_slot_condition(
    session: Session, job_id: uuid.UUID, *, default_max_running: int, now: datetime
) -> ColumnElement[bool]:
    """For the claim of ``job_id``: the condition that its client has a running slot free
    (or no running limit), to go in the claim's one UPDATE.

    Running means under a live lease: a job whose worker died frees its slot when
    its lease runs out. On PostgreSQL the client's row is locked first, until the
    claim's transaction ends, so that two workers claiming jobs of one client at
    the same instant see each other's claim (the second UPDATE, its snapshot taken
    after the lock, counts the first's job). ``FOR NO KEY UPDATE``: a submit's
    insert, which takes a key share of the row, is not held up by it. SQLite has
    one writer at a time, and the UPDATE reads and writes in one step.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            select(ApiClient.id)
            .join(Job, Job.client_id == ApiClient.id)
            .where(Job.id == job_id)
            .with_for_update(of=ApiClient, key_share=True)
        )
    return slot_free(default_max_running=default_max_running, now=now)


def slot_free(*, default_max_running: int, now: datetime) -> ColumnElement[bool]:
    """The condition, on a ``Job`` row, that its client has a running slot free (or no
    running limit); no lock: for the fair order's choice of candidates to claim."""
    own = select(ApiClient.max_running).where(ApiClient.id == Job.client_id).scalar_subquery()
    limit = func.coalesce(own, default_max_running)
    other = aliased(Job)
    running = (
        select(func.count(other.id))
        .where(
            other.client_id == Job.client_id,
            other.status == JobStatus.RUNNING,
            other.lease_expires_at >= now,
            other.id != Job.id,
        )
        .scalar_subquery()
    )
    return or_(limit <= 0, running < limit)


def jobs_to_offer(
    session: Session, job_id: uuid.UUID, *, default_max_running: int, now: datetime
) -> list[uuid.UUID]:
    """After a job of a client ended or was handed back: the client's oldest queued jobs,
    one per running slot it has free, to send to the workers again (a claim may have
    left them queued for want of a slot). Empty when the client has no running limit."""
    row = session.execute(
        select(Job.client_id, ApiClient.max_running)
        .join(ApiClient, ApiClient.id == Job.client_id)
        .where(Job.id == job_id)
    ).one_or_none()
    if row is None:
        session.rollback()
        return []
    client_id, own = row
    limit = default_max_running if own is None else int(own)
    if limit <= 0:
        session.rollback()
        return []
    running = session.scalar(
        select(func.count(Job.id)).where(
            Job.client_id == client_id,
            Job.status == JobStatus.RUNNING,
            Job.lease_expires_at >= now,
        )
    )
    free = limit - int(running or 0)
    offered: list[uuid.UUID] = []
    if free > 0:
        offered = list(
            session.scalars(
                select(Job.id)
                .where(Job.client_id == client_id, Job.status == JobStatus.QUEUED)
                .order_by(Job.created_at, Job.id)
                .limit(free)
            )
        )
    session.rollback()
    return offered
