"""One claimed job's reporter: the engine's callbacks, the lease renewals, and why it stops.

``JobReporter`` is all that a run tells the database and the job's files while
it holds the lease: progress, previews and checkpoints (named by the attempt),
the renewals the lease thread (``worker.lease``) sends, and the writes of the
outcome, tried again while the database is down. It records why the engine is
to stop as one ``StopReason``, once, when the reason arises; ``worker.runner``
reads it once the engine has stopped.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from shared import leases
from shared.errors import LeaseLostError, StorageError
from shared.jobs import Claim
from shared.logging import job_event
from shared.loss_series import LossSeries, save_losses
from shared.models import EventKind, utcnow
from shared.storage import checkpoint_file, preview_file
from worker.db_retry import DB_RETRY_MAX_SECONDS, DatabaseWaitAbandoned, retry_while_unavailable
from worker.engine import Progress, encode_png
from worker.fault_hooks import pause_before_write

if TYPE_CHECKING:
    from worker.context import WorkerContext

log = logging.getLogger(__name__)

T = TypeVar("T")


class StopReason(StrEnum):
    """Why the engine is to stop before its last iteration. The first to arise wins."""

    CANCELED = "canceled"  # the client asked; the claim or a renewal read the request
    DEADLINE = "deadline"  # the job's deadline (the submit's Cancel-After) has passed
    TIMED_OUT = "timed_out"  # this attempt ran past STYLEQUEUE_MAX_RUN_SECONDS
    LEASE_LOST = "lease_lost"  # a guarded write matched no row: another worker holds the job
    # No renewal got through before the lease this worker last renewed ran out (cut
    # off from the database): it stops before another worker may claim the job.
    LEASE_RAN_OUT = "lease_ran_out"
    SHUTDOWN = "shutdown"  # the worker is shutting down: checkpoint and hand the job back


class WriteAbandonedError(LeaseLostError):
    """A write of a job's outcome given up: the database did not answer before the
    lease ran out. Whether its last try committed is unknown."""


class JobReporter:
    """The engine's callbacks for one claimed job, and the lease thread's renewals.

    ``renew`` runs on the lease thread (``LeaseKeeper``) once per heartbeat
    interval: the last progress seen, the lease renewal and reading
    cancel_requested in one statement. ``on_progress`` runs every iteration,
    notes the progress, writes a preview every few seconds and a checkpoint
    every so often. ``should_stop`` is then a free check of the stop reason.
    """

    def __init__(
        self,
        ctx: WorkerContext,
        session: Session,
        claim: Claim,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ctx = ctx
        self._session = session
        self._claim = claim
        self._clock = clock
        started = clock()
        # The last Progress's (iteration, iterations, eta), for the next renewal to write.
        self._progress: tuple[int, int, float | None] | None = None
        # Our own view of the lease: a worker cut off from the database stops once
        # the lease it last renewed runs out, before another worker may claim the job.
        self._lease_until = started + ctx.settings.lease_seconds
        self._last_preview = started
        self._last_checkpoint = started
        # Counted per attempt, on this worker's clock (no clock skew with the database):
        # time the job spent queued, or waiting for a dead worker's lease to expire,
        # is not its own run time and must not make a resumed attempt fail at once.
        self._deadline = started + ctx.settings.max_run_seconds
        # The job's own deadline, on this clock from now on (None: it has none).
        self._cancel_at = (
            None
            if claim.deadline_at is None
            else started + (claim.deadline_at - utcnow()).total_seconds()
        )
        # The committed files: what the row names (only the lease holder changes that).
        self._checkpoint = claim.checkpoint_file
        self._preview = claim.preview_file
        # Set by both threads (the engine's and the lease thread): the first one wins.
        self._stop_reason: StopReason | None = None
        self._stop_lock = threading.Lock()
        # Whatever stopped the engine first, once the lease is lost nothing more is
        # written under it (``check_lease``).
        self._lease_lost = False
        self._failed_heartbeats = 0
        # This attempt's loss curve, downsampled; written with each preview and at the end.
        self._losses = LossSeries()
        if claim.cancel_requested:
            self._stop(StopReason.CANCELED)

    @property
    def stop_reason(self) -> StopReason | None:
        """Why the engine is to stop, as recorded when it arose; None while it may go on."""
        return self._stop_reason

    @property
    def lease_lost(self) -> bool:
        """Whether the lease is lost (to another worker, or run out on our clock)."""
        return self._lease_lost

    def should_stop(self) -> bool:
        """The engine's check between iterations: whether a reason to stop has arisen."""
        if self._stop_reason is None and self._ctx.shutting_down.is_set():
            self._stop(StopReason.SHUTDOWN)
        return self._stop_reason is not None

    @property
    def job_id(self) -> uuid.UUID:
        return self._claim.job_id

    @property
    def progress(self) -> tuple[int, int] | None:
        """(iteration, iterations) as the engine last reported them; None before any."""
        return self._progress[:2] if self._progress else None

    @property
    def claim(self) -> Claim:
        return self._claim

    @property
    def iteration(self) -> int:
        """The last iteration the engine reported in this attempt (0: none yet)."""
        return self._progress[0] if self._progress else 0

    @property
    def checkpoint_name(self) -> str | None:
        """The checkpoint the row names now (this attempt's latest, or the one it resumed)."""
        return self._checkpoint

    def committed_checkpoint(self, name: str) -> None:
        """The row names checkpoint ``name`` now: the one it named before goes."""
        previous, self._checkpoint = self._checkpoint, name
        if previous is not None and previous != name:
            self._ctx.storage.delete(self._claim.job_id, previous)

    def check_lease(self) -> None:
        """LeaseLostError once the lease is lost: from then on the worker writes nothing."""
        self._check_clock(self._clock())
        if self._lease_lost:
            raise LeaseLostError(f"lost the lease on job {self._claim.job_id}")

    def put_own(self, kind: str, name: str, data: bytes) -> None:
        """Store a file of this attempt's own (``name`` holds its attempt number).

        Nothing once the lease is lost (LeaseLostError). A worker that loses it
        between this check and the write (a pause of the process) writes a file that
        no row names: it is never served or resumed from, and it deletes it once its
        commit is refused (``forget_own``).
        """
        self.check_lease()
        pause_before_write(kind, self._claim.job_id, self._claim.attempt)
        self._ctx.storage.put(self._claim.job_id, name, data, durable=kind != "preview")

    def forget_own(self, name: str, exc: LeaseLostError) -> None:
        """The row refused to name our file ``name``: nobody else ever will, remove it.

        Not when the database stopped answering: the commit may have gone through.
        """
        if not isinstance(exc, WriteAbandonedError):
            self._ctx.storage.delete(self._claim.job_id, name)

    def on_progress(self, progress: Progress) -> None:
        now = self._clock()
        settings = self._ctx.settings
        self._progress = (progress.iteration, progress.iterations, progress.eta_seconds)
        self._losses.add(
            progress.iteration,
            progress.loss,
            progress.content_loss,
            progress.style_loss,
            progress.tv_loss,
        )
        self._check_clock(now)
        if self.should_stop():
            return
        if now - self._last_preview >= settings.preview_seconds:
            self._last_preview = now
            self._best_effort("preview", self._save_preview, progress)
            self._best_effort("losses", self._save_losses, progress)
        if now - self._last_checkpoint >= settings.checkpoint_seconds:
            self._last_checkpoint = now
            self._best_effort("checkpoint", self._save_checkpoint, progress)

    def flush_losses(self) -> None:
        """Write this attempt's loss curve as it ends (best effort: for operators only)."""
        if len(self._losses):
            try:
                self._save_losses(None)
            except SQLAlchemyError:
                with contextlib.suppress(SQLAlchemyError):
                    self._session.rollback()
                log.warning(
                    "job %s: could not save its loss curve",
                    self._claim.job_id,
                    exc_info=True,
                    extra=self.event("losses_failed"),
                )

    def _save_losses(self, _: Progress | None) -> None:
        save_losses(self._session, self._claim.job_id, self._claim.attempt, self._losses.points())

    def renew(self, session: Session) -> None:
        """Renew the lease (and write the last progress) on ``session``: the lease thread's."""
        now = self._clock()
        self._heartbeat(session, now)
        self._check_clock(now, run_time=False)

    def write(self, what: str, write: Callable[[], T]) -> T:
        """A write of this job's outcome, tried again while the database is down.

        Only until the lease runs out: after that another worker may claim the
        job, so this one gives up (LeaseLostError) and the next attempt resumes
        from the last checkpoint.
        """
        try:
            return retry_while_unavailable(
                self._session,
                write,
                what=f"{what} of job {self._claim.job_id}",
                give_up=lambda: self._clock() + DB_RETRY_MAX_SECONDS >= self._lease_until,
            )
        except DatabaseWaitAbandoned:
            raise WriteAbandonedError(f"could not {what} before the lease ran out") from None

    def event(self, event: str, **fields: object) -> dict[str, object]:
        """The ``extra`` of this job's log line: the event, the worker and the attempt."""
        return job_event(
            event,
            self._claim.job_id,
            worker=self._ctx.name,
            attempt=self._claim.attempt,
            **fields,
        )

    def _stop(self, reason: StopReason) -> bool:
        """Record ``reason`` unless one is recorded already; whether it was."""
        with self._stop_lock:
            if self._stop_reason is not None:
                return False
            self._stop_reason = reason
            return True

    def _lose_lease(self, reason: StopReason) -> None:
        self._lease_lost = True
        self._stop(reason)

    def _check_clock(self, now: float, *, run_time: bool = True) -> None:
        # The maximum run time is counted by the engine's iterations (``run_time``):
        # a job stopped for it has always made progress, and records where.
        if now >= self._lease_until and not self._lease_lost:
            log.warning(
                "job %s: could not renew the lease in time; stopping",
                self._claim.job_id,
                extra=self.event("lease_expired"),
            )
            self._lose_lease(StopReason.LEASE_RAN_OUT)
        if run_time and now >= self._deadline and self._stop(StopReason.TIMED_OUT):
            log.warning(
                "job %s: past the maximum run time; stopping",
                self._claim.job_id,
                extra=self.event("timeout"),
            )
        late = self._cancel_at is not None and now >= self._cancel_at
        if late and self._stop(StopReason.DEADLINE):
            log.info(
                "job %s: past its deadline; stopping",
                self._claim.job_id,
                extra=self.event("deadline_exceeded"),
            )

    def _save_preview(self, progress: Progress) -> None:
        name = preview_file(self._claim.attempt, progress.iteration)
        self.put_own("preview", name, encode_png(progress.image()))
        try:
            leases.record_preview(self._session, self._claim, name=name)
        except LeaseLostError:
            self._lose_lease(StopReason.LEASE_LOST)
            self._ctx.storage.delete(self._claim.job_id, name)
            return
        previous, self._preview = self._preview, name
        if previous is not None and previous != name:
            self._ctx.storage.delete(self._claim.job_id, previous)

    def _save_checkpoint(self, progress: Progress) -> None:
        name = checkpoint_file(self._claim.attempt, progress.iteration)
        self.put_own("checkpoint", name, progress.state().to_bytes())
        try:
            leases.record_checkpoint(
                self._session, self._claim, iteration=progress.iteration, name=name
            )
        except LeaseLostError:
            self._lose_lease(StopReason.LEASE_LOST)
            self._ctx.storage.delete(self._claim.job_id, name)
            return
        self.committed_checkpoint(name)
        log.info(
            "job %s checkpoint at iteration %d",
            self._claim.job_id,
            progress.iteration,
            extra=self.event(EventKind.CHECKPOINT, iteration=progress.iteration),
        )

    def _best_effort(self, what: str, save: Callable[[Progress], None], progress: Progress) -> None:
        # A full disk or a database hiccup costs a preview or a checkpoint, not the job.
        try:
            save(progress)
        except LeaseLostError:
            self._lose_lease(StopReason.LEASE_LOST)  # run_job logs it once the engine has stopped
        except (OSError, StorageError, SQLAlchemyError):
            with contextlib.suppress(SQLAlchemyError):  # the connection may be gone
                self._session.rollback()
            log.warning(
                "job %s: could not save a %s",
                self._claim.job_id,
                what,
                exc_info=True,
                extra=self.event(f"{what}_failed"),
            )

    def _heartbeat(self, session: Session, now: float) -> None:
        iteration, iterations, eta = self._progress or (None, None, None)
        try:
            cancel_requested = leases.heartbeat(
                session,
                self._claim,
                iteration=iteration,
                iterations=iterations,
                eta_seconds=eta,
                lease_seconds=self._ctx.settings.lease_seconds,
            )
        except LeaseLostError:
            self._lose_lease(StopReason.LEASE_LOST)  # run_job logs it once the engine has stopped
            return
        except Exception:  # a database hiccup: keep computing, the next heartbeat retries
            with contextlib.suppress(SQLAlchemyError):  # the connection may be gone
                session.rollback()
            self._failed_heartbeats += 1
            # The traceback once per outage; then one line each time.
            log.warning(
                "job %s: heartbeat failed (%d in a row; the lease runs out in %.0f s)",
                self._claim.job_id,
                self._failed_heartbeats,
                max(0.0, self._lease_until - now),
                exc_info=self._failed_heartbeats == 1,
                extra=self.event("heartbeat_failed"),
            )
            return
        # From when the renewal was sent: the database's lease runs out no sooner.
        self._lease_until = now + self._ctx.settings.lease_seconds
        if cancel_requested:
            self._stop(StopReason.CANCELED)
        if self._failed_heartbeats:
            log.info(
                "job %s: heartbeat renewed the lease after %d failures",
                self._claim.job_id,
                self._failed_heartbeats,
                extra=self.event("heartbeat_recovered", failures=self._failed_heartbeats),
            )
            self._failed_heartbeats = 0
