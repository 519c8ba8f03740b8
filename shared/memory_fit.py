"""Whether a queued job fits any live worker: the memory its estimate asks for against
the budgets of the workers beating now (``shared.workers``), for its JSON and /admin.

A job whose estimate is over every live worker's budget stays queued (a bigger worker
may come) and says so: ``memory.fits_no_worker`` in its JSON. With no live worker at
all it says nothing of the kind (no worker is a matter of its own, shown on /admin's
workers page), nor for a job without an estimate (rows from before it), nor once the
job is no longer queued. A worker registered without a budget fits every job.

The live budgets are read once a second at most per process (``LiveBudgets``): a
poll costs no query of its own.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.models import JobStatus, Worker, utcnow
from shared.workers import ALIVE_SECONDS

CACHE_SECONDS = 1.0


@dataclass(frozen=True)
class LiveBudgets:
    """The live workers' budgets as read: how many, and the largest (None: one has none)."""

    live: int
    largest: int | None

    def fits_none(self, estimate: int | None) -> bool:
        """True when workers are live, ``estimate`` is known and none of them can take it."""
        if estimate is None or self.live == 0 or self.largest is None:
            return False
        return estimate > self.largest


NO_WORKERS = LiveBudgets(0, None)


def read_live_budgets(session: Session) -> LiveBudgets:
    """The live workers (beating within ``ALIVE_SECONDS``) and their largest budget."""
    alive_since = utcnow() - timedelta(seconds=ALIVE_SECONDS)
    live, unbounded, largest = session.execute(
        select(
            func.count(Worker.name),
            func.count(Worker.name) - func.count(Worker.memory_budget_bytes),
            func.max(Worker.memory_budget_bytes),
        ).where(Worker.last_heartbeat_at >= alive_since)
    ).one()
    return LiveBudgets(int(live or 0), None if unbounded else largest)


class BudgetCache:
    """``read_live_budgets`` kept for ``CACHE_SECONDS``, per process (thread-safe)."""

    def __init__(self, seconds: float = CACHE_SECONDS) -> None:
        self._seconds = seconds
        self._lock = threading.Lock()
        self._value: LiveBudgets | None = None
        self._read_at = 0.0

    def get(self, session: Session) -> LiveBudgets:
        now = time.monotonic()
        with self._lock:
            if self._value is not None and now - self._read_at < self._seconds:
                return self._value
        value = read_live_budgets(session)
        with self._lock:
            self._value, self._read_at = value, time.monotonic()
        return value


_cache = BudgetCache()


def live_budgets(session: Session) -> LiveBudgets:
    """The process's cached ``read_live_budgets``."""
    return _cache.get(session)


def memory_dict(
    estimate: int | None, status: JobStatus, budgets: LiveBudgets | None
) -> dict[str, Any]:
    """A job's ``memory`` in its JSON: its estimate and whether it fits no live worker."""
    fits_none = status is JobStatus.QUEUED and budgets is not None and budgets.fits_none(estimate)
    return {
        "estimate_bytes": estimate,
        "fits_no_worker": fits_none,
        "largest_worker_budget_bytes": budgets.largest if fits_none and budgets else None,
    }
