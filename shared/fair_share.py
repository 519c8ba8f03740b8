"""Which queued job starts next: weighted fair order across clients, priority within one.

The order is virtual-time (stride) scheduling. Each client has a tag, the virtual
start time of its latest started job (``api_clients.fair_tag``); the virtual time
``V`` is the largest tag, the start time of the latest job started. A client's
next job starts at virtual time ``max(tag + 1/weight, V)`` (``V`` for a client
that never had a job start), its k-th queued job after that ``k/weight`` later;
the job with the least virtual start goes first (ties: the older job). A client
with weight 2 thus starts two jobs for each one of a client with weight 1 while
both wait, and a client that had nothing queued comes back at ``V``: no credit
for its idle time, and no wait behind another client's backlog beyond the next
free worker. Within a client, jobs go by ``priority`` (higher first), then age.

Redis messages only say that work exists: a worker that receives one claims the
first job of the fair order that it can (``claim_next``), whichever job the
message named; the message's own job is tried last, so that what a claim of it
does (a deadline's cancel) still happens. The guarded UPDATE of
``shared.jobs.claim_job`` stays the arbiter: two workers that pick the same job
race on it and the loser takes the next candidate. A lost, duplicated or
re-sent message is harmless: each delivery claims one job (and, for a worker that
batches, the next jobs of the order that can join it: ``claim_batch_members``), and
a job is claimed only while claimable, so none runs twice and every queued job has
a message (its own, or a re-send of the reconciler's) that can start it.

A worker chooses among the jobs of its own broker key space (``jobs.queue_name``,
the ``STYLEQUEUE_REDIS_PREFIX`` the submit's message went to): deployments that
share a database but not a key space never take each other's jobs.

``fair_candidates`` is the order itself, for any caller with conditions of its
own (the claimable predicate is ``shared.jobs.claimable``, always applied).
"""

from __future__ import annotations

import contextlib
import heapq
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, or_, select, text, update
from sqlalchemy.orm import Session, aliased

from shared.client_limits import slot_free
from shared.jobs import Claim, attempts_left, claim_job, claimable, fits_memory
from shared.memory_estimate import batch_member_bytes
from shared.models import ApiClient, Job, JobStatus, utcnow
from shared.sql_time import POSTGRESQL, dialect_of

TURN_WAIT_SECONDS = 2.0  # the most a worker waits for another's choice and claim
TURN_POLL_SECONDS = 0.005
MIN_WEIGHT = 1e-6  # a weight is positive (``stylequeue keys``); this guards the division
CLAIM_CANDIDATES = 4  # tried in fair order before the message's own job


@dataclass(frozen=True)
class FairCandidate:
    """A job that may start, with its virtual start time in the fair order."""

    job_id: uuid.UUID
    client_id: int
    start_tag: float


def virtual_time(session: Session) -> float:
    """``V``: the virtual start time of the latest job started (0 before any)."""
    return float(session.scalar(select(func.max(ApiClient.fair_tag))) or 0.0)


def next_tag(fair_tag: float | None, weight: float | None, now_v: float) -> float:
    """The virtual start time of a client's next job, with ``now_v`` the virtual time."""
    if fair_tag is None:
        return now_v
    return max(fair_tag + 1.0 / max(weight or 1.0, MIN_WEIGHT), now_v)


def fair_candidates(
    session: Session,
    now: datetime,
    extra_conditions: Sequence[ColumnElement[bool]] = (),
    limit: int = 1,
) -> list[FairCandidate]:
    """The first ``limit`` claimable jobs (meeting ``extra_conditions`` too, conditions
    on ``Job``) in fair order. One query for the clients that have such a job, then one
    or two per client whose turn comes within the ``limit`` (a client's jobs through
    ``ix_jobs_client_fair``, read in order and stopped after ``limit``)."""
    conditions = [claimable(now), *extra_conditions]
    client = aliased(ApiClient)
    waiting = select(Job.id).where(Job.client_id == client.id, *conditions).exists()
    rows = session.execute(select(client.id, client.weight, client.fair_tag).where(waiting)).all()
    if not rows:
        return []
    now_v = virtual_time(session)
    places = sorted((next_tag(tag, weight, now_v), cid, weight or 1.0) for cid, weight, tag in rows)
    heap: list[tuple[float, datetime, int, uuid.UUID]] = []
    found: list[FairCandidate] = []
    fetched = 0
    while len(found) < limit:
        # A client not read yet can come first only if its next tag is no later than the best.
        while fetched < len(places) and (not heap or places[fetched][0] <= heap[0][0]):
            tag, cid, weight = places[fetched]
            fetched += 1
            step = 1.0 / max(weight, MIN_WEIGHT)
            for k, (job_id, created_at) in enumerate(_client_jobs(session, cid, conditions, limit)):
                heapq.heappush(heap, (tag + k * step, created_at, cid, job_id))
        if not heap:
            break
        tag, _, cid, job_id = heapq.heappop(heap)
        found.append(FairCandidate(job_id, cid, tag))
    return found


def _client_jobs(
    session: Session, client_id: int, conditions: Sequence[ColumnElement[bool]], limit: int
) -> list[tuple[uuid.UUID, datetime]]:
    """A client's first ``limit`` jobs in its own order: priority (higher first), then age.

    Queued and running (a lease that ran out) are read apart, each an index range read
    in order, and merged."""
    rows: list[Any] = []
    for status in (JobStatus.QUEUED, JobStatus.RUNNING):
        rows += session.execute(
            select(Job.priority, Job.created_at, Job.id)
            .where(Job.client_id == client_id, Job.status == status, *conditions)
            .order_by(Job.priority.desc(), Job.created_at, Job.id)
            .limit(limit)
        ).all()
    rows.sort(key=lambda row: (-row[0], row[1], row[2]))
    return [(job_id, created_at) for _, created_at, job_id in rows[:limit]]


def candidate_conditions(
    now: datetime, *, max_attempts: int | None, max_running: int
) -> list[ColumnElement[bool]]:
    """What ``claim_job`` checks beyond ``claimable``, as conditions on ``Job`` without locks:
    the deadline not passed, attempts left, a running slot free for the client."""
    conditions = [
        or_(Job.deadline_at.is_(None), Job.deadline_at > now),
        slot_free(default_max_running=max_running, now=now),
    ]
    if max_attempts is not None:
        conditions.append(attempts_left(max_attempts))
    return conditions


def record_start(candidate: FairCandidate) -> Callable[[Session], None]:
    """What a claim of the candidate's job writes in its own transaction: its client's tag
    moves to the job's virtual start (never back: of two racing claims of one client, the
    later tag stays). In the claim's transaction, so that no other worker ever sees the
    job started and the tag not yet moved (and gives the client a second job at the
    same virtual time)."""

    def write(session: Session) -> None:
        session.execute(
            update(ApiClient)
            .where(
                ApiClient.id == candidate.client_id,
                or_(ApiClient.fair_tag.is_(None), ApiClient.fair_tag < candidate.start_tag),
            )
            .values(fair_tag=candidate.start_tag)
        )

    return write


@contextlib.contextmanager
def claims_in_turn(session: Session, queue_name: str) -> Iterator[bool]:
    """Hold the key space's claim lock (PostgreSQL: a session advisory lock on a connection
    of its own) while one worker chooses and claims: without it, two workers that choose
    at once may read one client's tag before the other's claim and its jobs after, and
    give it a second start in one turn, or pass another client over for one. A worker
    waits at most ``TURN_WAIT_SECONDS`` for it, then claims without it (a worker stopped
    while holding it never stalls the others). Yields whether it is held; on SQLite
    (one writer at a time) there is none to take."""
    if dialect_of(session) != POSTGRESQL:
        yield False
        return
    key = zlib.crc32(f"stylequeue-claims:{queue_name}".encode()) - 2**31
    with session.get_bind().engine.connect() as opened:
        lock = opened.execution_options(isolation_level="AUTOCOMMIT")
        held = False
        deadline = time.monotonic() + TURN_WAIT_SECONDS
        while not held:
            held = bool(lock.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}))
            if held or time.monotonic() >= deadline:
                break
            time.sleep(TURN_POLL_SECONDS)
        try:
            yield held
        finally:
            if held:
                lock.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})


def claim_next(
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
    queue_name: str = "",
) -> Claim | None:
    """For a message naming ``job_id``: claim the first job of the fair order among those
    of ``queue_name`` (the worker's broker key space) that can be claimed
    (``shared.jobs.claim_job``, same arguments), else ``job_id`` itself; None when
    nothing is claimable. The claim's ``job_id`` says which job it is."""
    now = utcnow()
    own_space = session.scalar(select(Job.queue_name).where(Job.id == job_id))
    session.rollback()
    args = _claim_args(
        worker=worker,
        lease_seconds=lease_seconds,
        max_attempts=max_attempts,
        pid=pid,
        hostname=hostname,
        max_running=max_running,
        memory_budget=memory_budget,
    )
    if own_space == "" and queue_name != "":
        # A row that names no key space (one from before, or stored by a path that named
        # none) is in no worker's fair order: only its own message can start it, so that
        # message starts it, rather than another job's that would leave it unstarted.
        own = _as_candidate(session, job_id)
        session.rollback()
        return claim_job(
            session, job_id, on_claim=None if own is None else record_start(own), **args
        )
    conditions = candidate_conditions(now, max_attempts=max_attempts, max_running=max_running)
    conditions += [fits_memory(memory_budget), Job.queue_name == queue_name]
    tried = set()
    with claims_in_turn(session, queue_name):
        candidates = fair_candidates(session, now, conditions, limit=CLAIM_CANDIDATES)
        session.rollback()  # the claim's own transaction starts afresh
        for candidate in candidates:
            tried.add(candidate.job_id)
            claim = claim_job(session, candidate.job_id, on_claim=record_start(candidate), **args)
            if claim is not None:
                return claim
    if job_id in tried:
        return None
    own = _as_candidate(session, job_id)
    session.rollback()
    return claim_job(session, job_id, on_claim=None if own is None else record_start(own), **args)


def _claim_args(
    *,
    worker: str,
    lease_seconds: float,
    max_attempts: int | None,
    pid: int | None,
    hostname: str | None,
    max_running: int,
    memory_budget: int | None,
) -> dict[str, Any]:
    """What every claim of a worker passes to ``claim_job``, besides the job."""
    return {
        "worker": worker,
        "lease_seconds": lease_seconds,
        "max_attempts": max_attempts,
        "pid": pid,
        "hostname": hostname,
        "max_running": max_running,
        "memory_budget": memory_budget,
    }


def claim_batch_members(
    session: Session,
    *,
    shape: str,
    count: int,
    memory_left: int | None,
    batch_with: uuid.UUID,
    worker: str,
    lease_seconds: float,
    max_attempts: int | None = None,
    pid: int | None = None,
    hostname: str | None = None,
    max_running: int = 0,
    memory_budget: int | None = None,
    queue_name: str = "",
) -> list[Claim]:
    """Up to ``count`` more jobs for a worker's batch of output ``shape`` (``jobs.batch_shape``):
    the next jobs of the fair order, taken while each has that shape and its share of a
    batch's memory (``batch_member_bytes`` of its estimate) fits in ``memory_left`` (None:
    any). The first job that does not ends the search: a batch never passes over the job
    whose turn it is, so batching trades nothing of the fair order. Claimed as
    ``claim_next`` claims (the other arguments), each in its own transaction; each
    ``claimed`` event names ``batch_with``, the job whose batch it joins."""
    if count < 1:
        return []
    args = _claim_args(
        worker=worker,
        lease_seconds=lease_seconds,
        max_attempts=max_attempts,
        pid=pid,
        hostname=hostname,
        max_running=max_running,
        memory_budget=memory_budget,
    )
    now = utcnow()
    conditions = candidate_conditions(now, max_attempts=max_attempts, max_running=max_running)
    conditions += [fits_memory(memory_budget), Job.queue_name == queue_name]
    claims: list[Claim] = []
    with claims_in_turn(session, queue_name):
        candidates = fair_candidates(session, now, conditions, limit=count + CLAIM_CANDIDATES)
        ids = [candidate.job_id for candidate in candidates]
        found = session.execute(
            select(Job.id, Job.batch_shape, Job.memory_estimate).where(Job.id.in_(ids))
        ).all()
        session.rollback()
        shapes = {job_id: (job_shape, estimate) for job_id, job_shape, estimate in found}
        left = memory_left
        for candidate in candidates:
            if len(claims) >= count:
                break
            job_shape, estimate = shapes.get(candidate.job_id, (None, None))
            need = 0 if estimate is None else batch_member_bytes(estimate)
            if job_shape != shape or (left is not None and need > left):
                break
            claim = claim_job(
                session,
                candidate.job_id,
                on_claim=record_start(candidate),
                event_data={"batch_with": str(batch_with)},
                **args,
            )
            if claim is None:  # taken by another worker since it was read: the next one
                continue
            claims.append(claim)
            if left is not None:
                left -= need
    return claims


def _as_candidate(session: Session, job_id: uuid.UUID) -> FairCandidate | None:
    """A job claimed outside the fair order (a race took every candidate): its client's
    next tag, as if it had been that client's turn; None for a job that does not exist."""
    found = session.execute(
        select(ApiClient.id, ApiClient.weight, ApiClient.fair_tag)
        .join(Job, Job.client_id == ApiClient.id)
        .where(Job.id == job_id)
    ).one_or_none()
    if found is None:
        return None
    cid, weight, tag = found
    return FairCandidate(job_id, cid, next_tag(tag, weight, virtual_time(session)))


def jobs_leased_by(session: Session, worker: str) -> list[uuid.UUID]:
    """The running jobs under ``worker``'s lease: a dead pool process's job is among them
    when the message it was delivered named another."""
    found = list(
        session.scalars(
            select(Job.id).where(Job.status == JobStatus.RUNNING, Job.lease_owner == worker)
        )
    )
    session.rollback()
    return found
