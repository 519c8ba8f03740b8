"""Where a queued job stands: its place in the fair order and when it is expected to start.

A snapshot (``read_queue``) takes the first ``WINDOW`` queued jobs of the fair
order (``shared.fair_share.fair_candidates``, the order the workers claim in) of
one broker key space and plays the workers forward: each live worker (a worker
row that beat within ``shared.workers.ALIVE_SECONDS``) is free once its running
job ends (the ETA it reported, else the job's iterations left at the measured
seconds per iteration, ``shared.backlog.RunTimeModel``); the next job of the order
starts on the worker free first and keeps it for its own expected run time (its
output size and iterations at the seconds per iteration measured on the latest
jobs that succeeded). A job's position is its place in that order (1: the next to
start); its expected start is when its worker comes free.

What the figure leaves out, and says so in the docs: jobs submitted later that the
fair order puts ahead (another client's first job, a higher priority), a client's
running limit (a job waiting for its own client's slot is counted as if it could
start), cancels, and how far the measured times are from this job's. A job past
the window has no position (``None``) and no expected start; so has every queued
job while no worker is live (its position is still given).

A follower (``shared.follows``) shows its leader's place: it starts when its
leader does. Reading the snapshot costs one query per client whose turn comes
within the window, plus three small ones; ``QueueCache`` keeps one per process for
``CACHE_SECONDS``, so that every poll of a queued job reads it from memory.
"""

from __future__ import annotations

import heapq
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from shared.backlog import RunTimeModel, run_time_model
from shared.fair_share import fair_candidates
from shared.jobs import attempts_left
from shared.models import Job, JobStatus, Worker, utcnow
from shared.params import DEFAULT_SIZE_PX
from shared.workers import ALIVE_SECONDS

WINDOW = 1000  # the first jobs of the fair order that get a position
CACHE_SECONDS = 1.0  # a process reads the queue at most this often
# ... unless a job newer than its snapshot is shown: then as often as this.
NEWER_JOB_SECONDS = 0.2


@dataclass(frozen=True)
class QueuePlace:
    """A queued job's place: 1 is the next to start."""

    position: int
    expected_start_seconds: float | None  # from the snapshot's time; None: no live worker


@dataclass(frozen=True)
class QueueSnapshot:
    taken_at: datetime
    places: dict[uuid.UUID, QueuePlace] = field(default_factory=dict)
    live_workers: int = 0

    def place_of(self, job_id: uuid.UUID, follows: uuid.UUID | None = None) -> QueuePlace | None:
        """The place of queued job ``job_id`` (a follower: its leader's); None past the window."""
        return self.places.get(follows if follows is not None else job_id)

    def queue_dict(
        self, job_id: uuid.UUID, follows: uuid.UUID | None, now: datetime
    ) -> dict[str, object]:
        """The ``queue`` object of a queued job's JSON, measured at ``now``."""
        place = self.place_of(job_id, follows)
        if place is None or place.expected_start_seconds is None:
            seconds = None
        else:
            elapsed = (now - self.taken_at).total_seconds()
            seconds = round(max(0.0, place.expected_start_seconds - elapsed), 1)
        return {
            "position": None if place is None else place.position,
            "expected_start_seconds": seconds,
            "expected_start_at": None if seconds is None else now + timedelta(seconds=seconds),
            "live_workers": self.live_workers,
        }


def read_queue(
    session: Session,
    *,
    queue_name: str,
    max_attempts: int | None = None,
    now: datetime | None = None,
    window: int = WINDOW,
    live_workers: int | None = None,
) -> QueueSnapshot:
    """The first ``window`` claimable jobs of ``queue_name`` in fair order, each with its
    position and expected start (``live_workers``: how many workers share them; None:
    the workers that beat within ``ALIVE_SECONDS``)."""
    now = now or utcnow()
    conditions = [
        Job.queue_name == queue_name,
        or_(Job.deadline_at.is_(None), Job.deadline_at > now),
    ]
    if max_attempts is not None:
        conditions.append(attempts_left(max_attempts))
    order = fair_candidates(session, now, conditions, limit=window)
    model = run_time_model(session, now)
    live = live_workers if live_workers is not None else count_live_workers(session, now)
    expected = _expected_seconds(session, model, [c.job_id for c in order])
    free_at = _workers_free_at(session, model, live, queue_name)
    places: dict[uuid.UUID, QueuePlace] = {}
    for position, candidate in enumerate(order, start=1):
        if free_at:
            start = heapq.heappop(free_at)
            heapq.heappush(free_at, start + expected.get(candidate.job_id, 0.0))
            places[candidate.job_id] = QueuePlace(position, round(start, 1))
        else:
            places[candidate.job_id] = QueuePlace(position, None)
    session.rollback()
    return QueueSnapshot(now, places, live)


def count_live_workers(session: Session, now: datetime) -> int:
    """The workers that beat within ``ALIVE_SECONDS`` of ``now``."""
    alive_since = now - timedelta(seconds=ALIVE_SECONDS)
    found = session.scalar(
        select(func.count(Worker.name)).where(Worker.last_heartbeat_at >= alive_since)
    )
    return int(found or 0)


def _expected_seconds(
    session: Session, model: RunTimeModel, job_ids: list[uuid.UUID]
) -> dict[uuid.UUID, float]:
    """Each job's expected run seconds (a resumed job's iterations left)."""
    found: dict[uuid.UUID, float] = {}
    size = Job.params["size"].as_integer()
    for start in range(0, len(job_ids), 500):
        chunk = job_ids[start : start + 500]
        rows = session.execute(
            select(Job.id, size, Job.iterations, Job.iteration).where(Job.id.in_(chunk))
        ).all()
        for job_id, px, iterations, iteration in rows:
            left = int(iterations or 0) - int(iteration or 0)
            found[job_id] = model.expected_seconds(int(px or DEFAULT_SIZE_PX), left)
    return found


def _workers_free_at(
    session: Session, model: RunTimeModel, live: int, queue_name: str
) -> list[float]:
    """A heap of when each live worker is free, in seconds from now (0: idle now): the
    running jobs of the key space, the soonest done first, one to a worker."""
    if live <= 0:
        return []
    size = Job.params["size"].as_integer()
    rows = session.execute(
        select(size, Job.iterations, Job.iteration, Job.eta_seconds).where(
            Job.status == JobStatus.RUNNING,
            Job.follows.is_(None),
            Job.queue_name == queue_name,
        )
    ).all()
    remaining = sorted(
        model.remaining_seconds(int(px or DEFAULT_SIZE_PX), int(iterations or 0), iteration, eta)
        for px, iterations, iteration, eta in rows
    )
    busy = remaining[:live]
    free = busy + [0.0] * (live - len(busy))
    heapq.heapify(free)
    return free


class QueueCache:
    """One process's latest snapshot of each key space, read again after ``CACHE_SECONDS``.

    Thread-safe. Once a snapshot exists, a request never waits for another's read: the
    first to find it stale reads the next one, the others meanwhile take the stale one.
    A snapshot taken before ``newest`` (the creation of the newest job the caller shows)
    cannot know that job: it is read again if older than ``NEWER_JOB_SECONDS``."""

    def __init__(self, seconds: float = CACHE_SECONDS) -> None:
        self._seconds = seconds
        self._lock = threading.Lock()
        self._found: dict[str, tuple[float, QueueSnapshot]] = {}
        self._reading: set[str] = set()

    def get(
        self,
        session: Session | Callable[[], Session],
        *,
        queue_name: str,
        max_attempts: int | None = None,
        newest: datetime | None = None,
    ) -> QueueSnapshot:
        """The snapshot; ``session`` (or what makes one, called only to read it) reads it."""
        with self._lock:
            found = self._found.get(queue_name)
            if found is not None:
                age = time.monotonic() - found[0]
                blind = newest is not None and found[1].taken_at < newest
                fresh = age < (min(self._seconds, NEWER_JOB_SECONDS) if blind else self._seconds)
                if fresh or queue_name in self._reading:
                    return found[1]
            self._reading.add(queue_name)
        try:
            reader = session if isinstance(session, Session) else session()
            snapshot = read_queue(reader, queue_name=queue_name, max_attempts=max_attempts)
        finally:
            with self._lock:
                self._reading.discard(queue_name)
        with self._lock:
            self._found[queue_name] = (time.monotonic(), snapshot)
        return snapshot

    def clear(self) -> None:
        with self._lock:
            self._found.clear()
