"""In-flight sharing: an identical job submitted while the first is queued or running
follows it (one engine run, both jobs end together) instead of running its own.

"Identical" is the result cache's word (``shared.result_cache``): the same
``cache_key`` in the same scope (the client's jobs, or every client's with
``STYLEQUEUE_CACHE_SCOPE=global``), and a submit with ``cache=false`` follows no
one. The leader is the oldest queued or running job with the key that follows no
one itself (``find_leader``); the follower is stored queued with ``follows`` set,
a ``following`` event (its leader a ``followed_by`` one), and is never sent to a
worker nor claimed (``shared.jobs.claimable``).

While the leader runs, its status (queued ↔ running) and progress are written to
its live followers' rows in the transaction of each change
(``shared.follow_progress``). When it ends, ``settle_followers`` ends them:

- succeeded: each follower succeeded, with its own copy of the result
  (``result.a0.png``, as a cache hit's: its retention stays its own);
- failed: each follower failed with the same error;
- canceled (or gone, or its result gone): the oldest follower is promoted: it
  follows no one, is queued and sent to a worker, and resumes from the leader's
  last state (the running leader's state as it stopped, or a queued leader's
  committed checkpoint, copied among its own files); the others follow it.

Whoever ends a leader calls it (the worker after its outcome, the API after a
client's cancel); the reconciler's sweep (``settle_orphaned_followers``) calls it
for any live follower whose leader has ended, so a crash in between leaves no
follower queued for ever. A follower canceled ends alone (``shared.jobs.cancel_job``);
its own deadline applies to it alone (``shared.deadlines``).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from shared.db import Database
from shared.errors import NotFoundError
from shared.follow_progress import LIVE
from shared.job_store import guarded_update
from shared.models import TRANSITIONS, EventKind, Job, JobStatus, utcnow
from shared.storage import Storage, checkpoint_file, committed_result, result_file

log = logging.getLogger(__name__)

# A follower's copy of its leader's result: attempt 0, a name no worker writes.
SHARED_RESULT_FILE = result_file(0)
# The state a promoted follower resumes from: (iteration, the checkpoint's bytes).
Checkpoint = tuple[int, bytes]


# The leader's lookup on the driver's fast path (``shared.db.ThreadConnections``): every
# submit that the cache did not serve makes it; through the ORM it cost most of a millisecond.
_LEADER_SQL = (
    "SELECT id FROM jobs WHERE cache_key = %s AND status IN ('queued', 'running')"
    " AND follows IS NULL{client} ORDER BY created_at LIMIT 1"
)
_LEADER_OF_ANY = _LEADER_SQL.format(client="")
_LEADER_OF_CLIENT = _LEADER_SQL.format(client=" AND client_id = %s")


def find_leader(
    session: Session, key: str, client_id: int | None, db: Database | None = None
) -> uuid.UUID | None:
    """The job a new job with ``key`` would follow: the oldest queued or running one with
    that key (of ``client_id``; None: any client's) that follows no one; None if none.

    With ``db`` on PostgreSQL, one prepared statement straight on the driver; else
    through ``session`` (then in a transaction of its own, rolled back)."""
    assert tuple(s.value for s in LIVE) == ("queued", "running")
    connections = None if db is None else db.thread_connections
    if connections is not None:
        if client_id is None:
            row = connections.fetch_one(_LEADER_OF_ANY, (key,))
        else:
            row = connections.fetch_one(_LEADER_OF_CLIENT, (key, client_id))
        return None if row is None else uuid.UUID(str(row[0]))
    query = select(Job.id).where(Job.cache_key == key, Job.status.in_(LIVE), Job.follows.is_(None))
    if client_id is not None:
        query = query.where(Job.client_id == client_id)
    found = session.scalar(query.order_by(Job.created_at).limit(1))
    session.rollback()
    return found


_STATUS_SQL = "SELECT status FROM jobs WHERE id = %s"


def is_live(session: Session, job_id: uuid.UUID, db: Database | None = None) -> bool:
    """Whether ``job_id`` is queued or running (read as committed now); with ``db`` on
    PostgreSQL straight on the driver, else through ``session``."""
    connections = None if db is None else db.thread_connections
    if connections is not None:
        row = connections.fetch_one(_STATUS_SQL, (job_id,))
        return row is not None and JobStatus(row[0]) in LIVE
    status = session.scalar(select(Job.status).where(Job.id == job_id))
    session.rollback()
    return status in LIVE


def has_followers(session: Session, leader: uuid.UUID) -> bool:
    found = session.scalar(
        select(Job.id).where(Job.follows == leader, Job.status.in_(LIVE)).limit(1)
    )
    session.rollback()
    return found is not None


def settle_followers(
    session: Session,
    storage: Storage,
    leader: uuid.UUID,
    *,
    checkpoint: Callable[[], Checkpoint | None] | None = None,
) -> list[uuid.UUID]:
    """End, or hand the run to, the live followers of ``leader`` once it has ended; the
    jobs to send to the workers (a promoted follower). Nothing while it is live.

    Idempotent: each follower's end is a guarded update from queued or running
    that still follows ``leader``, so a second call (or a cancel meanwhile) finds
    nothing to do. ``checkpoint``: for a canceled running leader, its state as it
    stopped (asked for only when there is a follower to hand it to).
    """
    row = session.execute(
        select(
            Job.status,
            Job.result_file,
            Job.error_code,
            Job.error_message,
            Job.checkpoint_file,
            Job.iteration,
        ).where(Job.id == leader)
    ).one_or_none()
    followers = list(
        session.scalars(
            select(Job.id)
            .where(Job.follows == leader, Job.status.in_(LIVE))
            .order_by(Job.created_at, Job.id)
        )
    )
    session.rollback()  # no transaction held open while the store is read
    if not followers or (row is not None and row.status in LIVE):
        return []
    if row is not None and row.status is JobStatus.SUCCEEDED:
        try:
            data = storage.get(leader, committed_result(row.result_file))
        except NotFoundError:
            log.warning("job %s: its result is gone; a follower runs it again", leader)
        else:
            for follower in followers:
                _finish(session, storage, follower, leader, data)
            return []
    if row is not None and row.status is JobStatus.FAILED:
        for follower in followers:
            _fail(session, follower, leader, row.error_code, row.error_message)
        return []
    state = checkpoint() if checkpoint is not None else None
    if state is None and row is not None and row.checkpoint_file is not None:
        try:  # a queued leader's committed checkpoint (handed back by a worker)
            state = (_iteration_of(row.checkpoint_file), storage.get(leader, row.checkpoint_file))
        except NotFoundError:
            state = None
    return [_promote(session, storage, followers, leader, state)]


def settle_or_leave(
    session: Session, storage: Storage, leader: uuid.UUID, send: Callable[[uuid.UUID], None]
) -> None:
    """``settle_followers``, then ``send`` each promoted job; a failure (the store or the
    database away) is logged and left to the reconciler's sweep, never raised: the
    caller's own change (a cancel, a submit) is committed already."""
    try:
        promoted = settle_followers(session, storage, leader)
    except Exception:
        session.rollback()
        log.warning(
            "job %s: its followers not settled; left to the reconciler", leader, exc_info=True
        )
        return
    for job_id in promoted:
        send(job_id)


def _iteration_of(name: str) -> int:
    """The iteration a checkpoint's name says it was taken after (0 for the old fixed name)."""
    found = re.search(r"\.i(\d+)\.bin$", name)
    return int(found.group(1)) if found else 0


def _finish(
    session: Session, storage: Storage, follower: uuid.UUID, leader: uuid.UUID, data: bytes
) -> None:
    storage.put(follower, SHARED_RESULT_FILE, data)
    now = utcnow()
    guarded_update(
        session,
        follower,
        [Job.follows == leader],
        {
            "result_file": SHARED_RESULT_FILE,
            "iteration": Job.iterations,
            "percent": 100.0,
            "eta_seconds": 0.0,
            "started_at": func.coalesce(Job.started_at, now),
            "finished_at": now,
            "updated_at": now,
        },
        transition=TRANSITIONS.follower_finish,
        data={"shared_from": str(leader)},
    )


def _fail(
    session: Session,
    follower: uuid.UUID,
    leader: uuid.UUID,
    code: str | None,
    message: str | None,
) -> None:
    now = utcnow()
    error = {"error_code": code, "error_message": message}
    guarded_update(
        session,
        follower,
        [Job.follows == leader],
        {**error, "eta_seconds": None, "finished_at": now, "updated_at": now},
        transition=TRANSITIONS.follower_fail,
        data={"shared_from": str(leader), **{k: v for k, v in error.items() if v is not None}},
    )


def _promote(
    session: Session,
    storage: Storage,
    followers: list[uuid.UUID],
    leader: uuid.UUID,
    state: Checkpoint | None,
) -> uuid.UUID:
    """The oldest follower runs the computation now: the others follow it first (so that a
    crash half way leaves a chain the sweep finishes), then it is queued, following no one,
    naming its copy of ``state`` as its checkpoint."""
    new, others = followers[0], followers[1:]
    now = utcnow()
    for other in others:
        guarded_update(
            session,
            other,
            [Job.follows == leader, Job.status.in_(LIVE)],
            {
                "follows": new,
                "status": JobStatus.QUEUED,
                "preview_file": None,
                "eta_seconds": None,
                "updated_at": now,
            },
            event=EventKind.FOLLOWING,
            data={"leader": str(new), "after": str(leader)},
        )
    values: dict[str, object] = {
        "follows": None,
        "preview_file": None,  # the leader's, not among its own files
        "eta_seconds": None,
        "updated_at": now,
    }
    data: dict[str, object] = {"after": str(leader)}
    if state is not None:
        iteration, blob = state
        name = checkpoint_file(0, iteration)
        storage.put(new, name, blob)
        values |= {"checkpoint_file": name}
        data |= {"iteration": iteration}
    else:
        values |= {"iteration": 0, "percent": 0.0}
    guarded_update(
        session,
        new,
        [Job.follows == leader],
        values,
        transition=TRANSITIONS.promote,
        data=data,
    )
    log.info("job %s: its leader %s ended canceled; it runs the computation now", new, leader)
    return new


def settle_orphaned_followers(
    session: Session, storage: Storage, *, limit: int = 100
) -> list[uuid.UUID]:
    """The reconciler's repair: settle the followers of every leader that has ended (or is
    gone) while they are still queued or running; the promoted jobs, to send."""
    leader = aliased(Job)
    live_leader = (
        select(leader.id).where(leader.id == Job.follows, leader.status.in_(LIVE)).exists()
    )
    leaders = list(
        session.scalars(
            select(Job.follows)
            .where(Job.follows.is_not(None), Job.status.in_(LIVE), ~live_leader)
            .distinct()
            .limit(limit)
        )
    )
    session.rollback()
    promoted = []
    for ended in leaders:
        if ended is not None:
            promoted += settle_followers(session, storage, ended)
    return promoted
