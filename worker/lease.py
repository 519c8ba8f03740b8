"""The lease thread: renews a claimed job's lease for as long as its worker works on it."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from worker.context import WorkerContext
    from worker.reporter import JobReporter

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews a claimed job's lease from a thread of its own, for as long as the job runs.

    Every heartbeat interval, whatever the engine is doing (decoding the inputs,
    computing the style targets, a long first iteration, writing a checkpoint),
    on a database session of its own: ``JobReporter.renew``. A worker that is
    alive keeps its job; only one that stops renewing (dead, frozen, cut off from
    the database) lets its lease run out, and only then may another worker claim
    the job. Once the lease is lost the thread stops and the engine stops at its
    next check.
    """

    def __init__(self, ctx: WorkerContext, reporter: JobReporter) -> None:
        self._ctx = ctx
        self._reporter = reporter
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"lease-{reporter.job_id}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing (the job's outcome is written, or the worker gave it up)."""
        self._stopped.set()
        self._thread.join(timeout=max(10.0, 2 * self._ctx.settings.heartbeat_seconds))

    def _run(self) -> None:
        interval = self._ctx.settings.heartbeat_seconds
        try:
            with self._ctx.db.session() as session:
                while not self._stopped.wait(interval):
                    self._reporter.renew(session)
                    if self._reporter.lease_lost:
                        return
        except Exception:  # never silently: the lease then runs out and the job moves on
            log.exception(
                "job %s: the lease thread failed",
                self._reporter.job_id,
                extra=self._reporter.event("lease_thread_failed"),
            )
