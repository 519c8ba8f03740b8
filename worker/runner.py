"""The glue that runs the engine for one job: claim, load inputs, transfer, report, store, finish.

The engine is pure compute; everything that touches the database or storage
for a run is here, and every state change goes through ``shared.jobs``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

import torch
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from shared import jobs
from shared.db import Database
from shared.errors import ClientError, EngineError, LeaseLostError, ParameterError, StorageError
from shared.images import decode_image
from shared.jobs import Claim, EventKind
from shared.logging import job_event
from shared.params import StyleParams
from shared.settings import Settings
from shared.storage import (
    CHECKPOINT_FILE,
    CONTENT_FILE,
    LocalStorage,
    checkpoint_file,
    preview_file,
    result_file,
    style_file,
)
from worker.engine import (
    EngineInterrupted,
    EngineState,
    Network,
    Progress,
    default_device,
    encode_png,
    get_network,
    load_network,
    pil_to_tensor,
    transfer,
)
from worker.fault_hooks import pause_before_write
from worker.registry import WorkerRegistry

log = logging.getLogger(__name__)

UNEXPECTED_ERROR_CODE = "internal_error"
# While the database cannot be reached, a write is tried again after these
# pauses (doubling up to the last): a worker waits for the database rather than
# dropping its message or its job.
DB_RETRY_FIRST_SECONDS = 0.2
DB_RETRY_MAX_SECONDS = 2.0
T = TypeVar("T")
TIMEOUT_ERROR_CODE = "timeout"


class Outcome(StrEnum):
    """How one delivery of a job's message ended, for logs and tests."""

    SKIPPED = "skipped"  # not claimable: running elsewhere, finished, or unknown
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    LEASE_LOST = "lease_lost"  # another worker owns the job now; we wrote nothing more
    # The worker is shutting down: the job checkpointed and handed back, queued (or,
    # the database down, never claimed); its message is sent again.
    RELEASED = "released"
    # The storage failed (full, read-only, gone): the job handed back, queued, for the
    # reconciler to send again after STYLEQUEUE_REQUEUE_AFTER_SECONDS.
    DEFERRED = "deferred"


@dataclass
class WorkerContext:
    """What one worker process holds for all its jobs (built after the fork)."""

    settings: Settings
    db: Database
    storage: LocalStorage
    name: str
    # Set when the worker is asked to shut down (SIGTERM): a running job
    # checkpoints and goes back to the queue instead of holding up the shutdown.
    shutting_down: threading.Event = field(default_factory=threading.Event)
    _network: Network | None = field(default=None, repr=False)
    _registry: WorkerRegistry | None = field(default=None, repr=False)

    def device(self) -> torch.device:
        device = self.settings.device
        return default_device() if device == "auto" else torch.device(device)

    def registry(self) -> WorkerRegistry:
        """This process in the ``workers`` table, started once the network is loaded."""
        if self._registry is None:
            self._registry = WorkerRegistry(self.db, self.name, self.device)
        return self._registry

    def close(self) -> None:
        """Stop beating and close the database connections."""
        if self._registry is not None:
            self._registry.stop()
        self.db.dispose()

    def network(self) -> Network:
        """The VGG19 network, loaded on first use and kept for every later job."""
        if self._network is None:
            chosen = self.device()
            path = self.settings.torchvision_weights_path
            if self.settings.weights == "torchvision" and path is not None:
                self._network = load_network("torchvision", chosen, torchvision_path=path)
            else:
                self._network = get_network(self.settings.weights, chosen)
            log.info("loaded %s VGG19 on %s", self.settings.weights, chosen)
            self.registry().start()
        return self._network


def worker_name() -> str:
    """Unique per process: the lease owner and the ``worker`` a job shows."""
    return f"{socket.gethostname()}/{os.getpid()}"


def make_context(settings: Settings) -> WorkerContext:
    return WorkerContext(
        settings=settings,
        db=Database(settings.database_url),
        storage=LocalStorage(settings.data_dir),
        name=worker_name(),
    )


def run_job(ctx: WorkerContext, job_id: uuid.UUID) -> Outcome:
    """Run one delivery of a job's message to its end. Never raises for a job's own failure."""
    with ctx.db.session() as session:
        max_attempts = ctx.settings.max_attempts
        try:
            # The database down (a restart, a failover): wait for it with the
            # message in hand, unacknowledged, rather than drop the message.
            claim = retry_while_unavailable(
                session,
                lambda: jobs.claim_job(
                    session,
                    job_id,
                    worker=ctx.name,
                    lease_seconds=ctx.settings.lease_seconds,
                    max_attempts=max_attempts,
                ),
                what=f"claim job {job_id}",
                give_up=ctx.shutting_down.is_set,
            )
        except DatabaseWaitAbandoned:
            log.info(
                "job %s not claimed: the worker is shutting down and the database is down",
                job_id,
                extra=job_event(Outcome.RELEASED, job_id, worker=ctx.name),
            )
            return Outcome.RELEASED
        if claim is None:
            exhausted = jobs.fail_exhausted_job(session, job_id, max_attempts=max_attempts)
            if exhausted is not None:
                ctx.storage.delete_checkpoints(job_id)  # a failed job is never resumed
                log.warning(
                    "job %s failed: %s: %s",
                    job_id,
                    jobs.TOO_MANY_ATTEMPTS,
                    exhausted.message,
                    extra=job_event(
                        EventKind.FAILED,
                        job_id,
                        error_code=jobs.TOO_MANY_ATTEMPTS,
                        worker=ctx.name,
                        attempt=exhausted.attempts,
                    ),
                )
                return Outcome.FAILED
            log.info(
                "job %s is not claimable (running elsewhere, finished or unknown)",
                job_id,
                extra=job_event(Outcome.SKIPPED, job_id, worker=ctx.name),
            )
            return Outcome.SKIPPED
        log.info(
            "job %s claimed by %s, attempt %d",
            job_id,
            ctx.name,
            claim.attempt,
            extra=job_event(EventKind.CLAIMED, job_id, worker=ctx.name, attempt=claim.attempt),
        )
        reporter = JobReporter(ctx, session, claim)
        keeper = LeaseKeeper(ctx, reporter)
        keeper.start()
        ctx.registry().job_started(job_id)
        outcome = Outcome.LEASE_LOST
        try:
            outcome = _run_claimed(ctx, session, claim, reporter)
        except LeaseLostError:
            log.warning(
                "job %s: lease lost; stopping without writing",
                job_id,
                extra=job_event(Outcome.LEASE_LOST, job_id, **_who(ctx, claim)),
            )
        finally:
            keeper.stop()
            ctx.registry().job_ended(
                succeeded=outcome is Outcome.SUCCEEDED, failed=outcome is Outcome.FAILED
            )
        return outcome


def _run_claimed(
    ctx: WorkerContext, session: Session, claim: Claim, reporter: JobReporter
) -> Outcome:
    try:
        params = StyleParams.model_validate(claim.params)
        content, styles = _load_inputs(ctx, claim)
        reporter.check_lease()
        output = _transfer(ctx, session, claim, reporter, params, content, styles)
        result = result_file(claim.attempt)
        _put_own(ctx, reporter, "result", result, encode_png(output))
    except EngineInterrupted as exc:
        if reporter.lease_lost:
            # Whether replaced or cut off from the database, this attempt commits
            # nothing more: the next one resumes from the last committed checkpoint.
            raise LeaseLostError(f"lost the lease on job {claim.job_id}") from None
        if reporter.timed_out:
            limit = ctx.settings.max_run_seconds
            message = (
                f"the job ran longer than the maximum run time ({limit:g} s, "
                f"STYLEQUEUE_MAX_RUN_SECONDS) and was stopped at iteration {exc.state.iteration}"
            )
            return _fail(ctx, session, claim, reporter, TIMEOUT_ERROR_CODE, message)
        if not reporter.cancel_requested:  # then the worker is shutting down
            return _release(ctx, session, claim, reporter, exc.state)
        stopped_at = exc.state.iteration
        reporter.write(
            "record the cancel",
            lambda: jobs.cancel_running_job(session, claim, iteration=stopped_at),
        )
        ctx.storage.delete_checkpoints(claim.job_id)
        log.info(
            "job %s canceled at iteration %d",
            claim.job_id,
            exc.state.iteration,
            extra=job_event(
                EventKind.CANCELED, claim.job_id, iteration=exc.state.iteration, **_who(ctx, claim)
            ),
        )
        return Outcome.CANCELED
    except (EngineError, ClientError) as exc:
        return _fail(ctx, session, claim, reporter, exc.code, exc.message)
    except LeaseLostError:
        raise
    except StorageError as exc:
        return _defer(ctx, session, claim, reporter, exc)
    except Exception as exc:
        log.exception(
            "job %s: unexpected error",
            claim.job_id,
            extra=job_event("unexpected_error", claim.job_id, **_who(ctx, claim)),
        )
        return _fail(
            ctx,
            session,
            claim,
            reporter,
            UNEXPECTED_ERROR_CODE,
            f"the worker hit an unexpected error ({exc.__class__.__name__}); it has been logged",
        )
    # The result is stored: the database down now only delays the success.
    try:
        reporter.write(
            "record the success",
            lambda: jobs.finish_job(session, claim, result_file=result),
        )
    except LeaseLostError as exc:
        _forget_own(ctx, claim, result, exc)
        raise
    ctx.storage.delete_checkpoints(claim.job_id)
    log.info(
        "job %s succeeded",
        claim.job_id,
        extra=job_event(EventKind.SUCCEEDED, claim.job_id, **_who(ctx, claim)),
    )
    return Outcome.SUCCEEDED


def _release(
    ctx: WorkerContext, session: Session, claim: Claim, reporter: JobReporter, state: EngineState
) -> Outcome:
    # The checkpoint first, named by the row in the same statement that hands the
    # job back: once the row says queued, another worker may claim it.
    name: str | None = checkpoint_file(claim.attempt, state.iteration)
    assert name is not None
    try:
        _put_own(ctx, reporter, "checkpoint", name, state.to_bytes())
    except (OSError, StorageError):
        log.warning(
            "job %s: could not store its checkpoint; handing it back without",
            claim.job_id,
            exc_info=True,
            extra=job_event("checkpoint_failed", claim.job_id, **_who(ctx, claim)),
        )
        name = None
    try:
        reporter.write(
            "hand the job back",
            lambda: jobs.release_job(
                session, claim, iteration=state.iteration, checkpoint_file=name
            ),
        )
    except LeaseLostError as exc:
        if name is not None:
            _forget_own(ctx, claim, name, exc)
        raise
    if name is not None:
        reporter.committed_checkpoint(name)
    log.info(
        "job %s released at iteration %d: the worker is shutting down",
        claim.job_id,
        state.iteration,
        extra=job_event(
            EventKind.RELEASED, claim.job_id, iteration=state.iteration, **_who(ctx, claim)
        ),
    )
    return Outcome.RELEASED


def _defer(
    ctx: WorkerContext, session: Session, claim: Claim, reporter: JobReporter, exc: StorageError
) -> Outcome:
    """Hand the job back after a storage failure: not the job's fault, nor a bug.

    It goes back to the queue as it is (its last committed checkpoint stays
    named, the result it could not store is lost), and the reconciler sends it
    again once STYLEQUEUE_REQUEUE_AFTER_SECONDS have passed: by then the
    operator may have made room. A ``released`` event with the error code; the
    attempt does not count as one whose worker died.
    """
    session.rollback()  # whatever the failed step left half-done in the session
    iteration = reporter.iteration
    log.warning(
        "job %s: the storage failed (%s: %s); handed back, to be sent again in %g s",
        claim.job_id,
        exc.code,
        exc.message,
        ctx.settings.requeue_after_seconds,
        extra=job_event(
            "storage_error",
            claim.job_id,
            error_code=exc.code,
            iteration=iteration,
            **_who(ctx, claim),
        ),
    )
    reporter.write(
        "hand the job back",
        lambda: jobs.release_job(session, claim, iteration=iteration, reason=exc.code),
    )
    return Outcome.DEFERRED


def _who(ctx: WorkerContext, claim: Claim) -> dict[str, object]:
    # The fields every worker-side job event carries in the JSON log.
    return {"worker": ctx.name, "attempt": claim.attempt}


def _transfer(
    ctx: WorkerContext,
    session: Session,
    claim: Claim,
    reporter: JobReporter,
    params: StyleParams,
    content: torch.Tensor,
    styles: list[torch.Tensor],
) -> torch.Tensor:
    def run(resume: EngineState | None) -> torch.Tensor:
        return transfer(
            ctx.network(),
            content,
            styles,
            params,
            on_progress=reporter.on_progress,
            should_stop=reporter.should_stop,
            resume=resume,
        )

    resume = _load_checkpoint(ctx, session, claim, reporter)
    if resume is None:
        return run(None)
    try:
        return run(resume)
    except ParameterError as exc:
        if exc.field != "resume":
            raise
        # Saved by a worker with other weights or another engine version: start over.
        log.warning(
            "job %s: checkpoint does not fit (%s); starting over",
            claim.job_id,
            exc,
            extra=job_event("checkpoint_discarded", claim.job_id, **_who(ctx, claim)),
        )
        return run(None)


def _fail(
    ctx: WorkerContext,
    session: Session,
    claim: Claim,
    reporter: JobReporter,
    code: str,
    message: str,
) -> Outcome:
    session.rollback()  # whatever the failed step left half-done in the session
    progress = reporter.progress
    reporter.write(
        "record the failure",
        lambda: jobs.fail_job(session, claim, code=code, message=message, progress=progress),
    )
    ctx.storage.delete_checkpoints(claim.job_id)  # a failed job is never resumed
    log.info(
        "job %s failed: %s: %s",
        claim.job_id,
        code,
        message,
        extra=job_event(EventKind.FAILED, claim.job_id, error_code=code, **_who(ctx, claim)),
    )
    return Outcome.FAILED


def _load_inputs(ctx: WorkerContext, claim: Claim) -> tuple[torch.Tensor, list[torch.Tensor]]:
    max_pixels = ctx.settings.max_image_pixels

    def load(name: str, field_name: str) -> torch.Tensor:
        data = ctx.storage.get(claim.job_id, name)
        return pil_to_tensor(decode_image(data, field=field_name, max_pixels=max_pixels))

    content = load(CONTENT_FILE, "content")
    styles = [load(style_file(i), f"style[{i}]") for i in range(claim.n_styles)]
    return content, styles


def _put_own(ctx: WorkerContext, reporter: JobReporter, kind: str, name: str, data: bytes) -> None:
    """Store a file of this attempt's own (``name`` holds its attempt number).

    Nothing once the lease is lost (LeaseLostError). A worker that loses it
    between this check and the write (a pause of the process) writes a file that
    no row names: it is never served or resumed from, and it deletes it once its
    commit is refused.
    """
    claim = reporter.claim
    reporter.check_lease()
    pause_before_write(kind, claim.job_id, claim.attempt)
    ctx.storage.put(claim.job_id, name, data, durable=kind != "preview")


def _forget_own(ctx: WorkerContext, claim: Claim, name: str, exc: LeaseLostError) -> None:
    # The row refused to name our file: nobody else ever will, remove it. Not when
    # the database stopped answering: the commit may have gone through.
    if not isinstance(exc, WriteAbandonedError):
        ctx.storage.delete(claim.job_id, name)


def _load_checkpoint(
    ctx: WorkerContext, session: Session, claim: Claim, reporter: JobReporter
) -> EngineState | None:
    name = claim.checkpoint_file
    if name is None:
        # A job from before the row named its checkpoint: the one fixed name it had.
        if claim.attempt <= 1 or not ctx.storage.exists(claim.job_id, CHECKPOINT_FILE):
            return None
        name = CHECKPOINT_FILE
    try:
        state = EngineState.from_bytes(ctx.storage.get(claim.job_id, name))
    except ClientError as exc:  # a torn, foreign or missing checkpoint: start over
        log.warning(
            "job %s: ignoring its checkpoint (%s)",
            claim.job_id,
            exc.message,
            extra=job_event("checkpoint_discarded", claim.job_id, **_who(ctx, claim)),
        )
        return None
    log.info(
        "job %s resumed from iteration %d",
        claim.job_id,
        state.iteration,
        extra=job_event(
            EventKind.RESUMED, claim.job_id, iteration=state.iteration, **_who(ctx, claim)
        ),
    )
    reporter.write(
        "record the resume", lambda: jobs.record_resumed(session, claim, iteration=state.iteration)
    )
    return state


class DatabaseWaitAbandoned(Exception):
    """``retry_while_unavailable`` gave up: the database did not answer in time."""


class WriteAbandonedError(LeaseLostError):
    """A write of a job's outcome given up: the database did not answer before the
    lease ran out. Whether its last try committed is unknown."""


def database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be reached (down, restarting, connection lost)."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def retry_while_unavailable(
    session: Session,
    write: Callable[[], T],
    *,
    what: str,
    give_up: Callable[[], bool],
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``write()``, tried again while the database cannot be reached, until ``give_up()``.

    Each failure rolls the session back (its connection is gone) and waits a
    little longer, up to DB_RETRY_MAX_SECONDS. Any other error is raised at once;
    DatabaseWaitAbandoned once ``give_up()`` says so.
    """
    delay = DB_RETRY_FIRST_SECONDS
    failures = 0
    while True:
        try:
            result = write()
        except SQLAlchemyError as exc:
            if not database_unavailable(exc):
                raise
            # On a connection SQLAlchemy has not marked dead yet, the rollback fails too.
            with contextlib.suppress(SQLAlchemyError):
                session.rollback()
            failures += 1
            if give_up():
                log.warning("could not %s: the database did not answer in time", what)
                raise DatabaseWaitAbandoned(what) from exc
            # The first failure with its cause, then a line now and then.
            if failures == 1 or failures % 30 == 0:
                log.warning(
                    "could not %s: the database cannot be reached (%s); trying again",
                    what,
                    exc.__class__.__name__,
                    exc_info=failures == 1,
                )
            sleep(delay)
            delay = min(2 * delay, DB_RETRY_MAX_SECONDS)
            continue
        if failures:
            log.info("%s: done after %d failed tries (the database is back)", what, failures)
        return result


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


class JobReporter:
    """The engine's callbacks for one claimed job, and the lease thread's renewals.

    ``renew`` runs on the lease thread (``LeaseKeeper``) once per heartbeat
    interval: the last progress seen, the lease renewal and reading
    cancel_requested in one statement. ``on_progress`` runs every iteration,
    notes the progress, writes a preview every few seconds and a checkpoint
    every so often. ``should_stop`` is then a free check of what the last
    renewal saw.
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
        # The committed files: what the row names (only the lease holder changes that).
        self._checkpoint = claim.checkpoint_file
        self._preview = claim.preview_file
        self.cancel_requested = claim.cancel_requested
        self.lease_lost = False
        self.lease_ran_out = False  # lost because the heartbeats failed, not to another worker
        self.timed_out = False
        self._failed_heartbeats = 0

    def should_stop(self) -> bool:
        return (
            self.cancel_requested
            or self.lease_lost
            or self.timed_out
            or self._ctx.shutting_down.is_set()
        )

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

    def committed_checkpoint(self, name: str) -> None:
        """The row names checkpoint ``name`` now: the one it named before goes."""
        previous, self._checkpoint = self._checkpoint, name
        if previous is not None and previous != name:
            self._ctx.storage.delete(self._claim.job_id, previous)

    def check_lease(self) -> None:
        """LeaseLostError once the lease is lost: from then on the worker writes nothing."""
        self._check_clock(self._clock())
        if self.lease_lost:
            raise LeaseLostError(f"lost the lease on job {self._claim.job_id}")

    def on_progress(self, progress: Progress) -> None:
        now = self._clock()
        settings = self._ctx.settings
        self._progress = (progress.iteration, progress.iterations, progress.eta_seconds)
        self._check_clock(now)
        if self.should_stop():
            return
        if now - self._last_preview >= settings.preview_seconds:
            self._last_preview = now
            self._best_effort("preview", self._save_preview, progress)
        if now - self._last_checkpoint >= settings.checkpoint_seconds:
            self._last_checkpoint = now
            self._best_effort("checkpoint", self._save_checkpoint, progress)

    def renew(self, session: Session) -> None:
        """Renew the lease (and write the last progress) on ``session``: the lease thread's."""
        now = self._clock()
        self._heartbeat(session, now)
        self._check_clock(now, run_time=False)

    def _check_clock(self, now: float, *, run_time: bool = True) -> None:
        # The maximum run time is counted by the engine's iterations (``run_time``):
        # a job stopped for it has always made progress, and records where.
        if now >= self._lease_until and not self.lease_lost:
            log.warning(
                "job %s: could not renew the lease in time; stopping",
                self._claim.job_id,
                extra=self.event("lease_expired"),
            )
            self.lease_lost = self.lease_ran_out = True
        if run_time and now >= self._deadline and not self.timed_out:
            log.warning(
                "job %s: past the maximum run time; stopping",
                self._claim.job_id,
                extra=self.event("timeout"),
            )
            self.timed_out = True

    @property
    def lease_until(self) -> float:
        """When the lease this worker last renewed runs out, on ``clock``."""
        return self._lease_until

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

    def _save_preview(self, progress: Progress) -> None:
        name = preview_file(self._claim.attempt, progress.iteration)
        _put_own(self._ctx, self, "preview", name, encode_png(progress.image()))
        try:
            jobs.record_preview(self._session, self._claim, name=name)
        except LeaseLostError:
            self.lease_lost = True
            self._ctx.storage.delete(self._claim.job_id, name)
            return
        previous, self._preview = self._preview, name
        if previous is not None and previous != name:
            self._ctx.storage.delete(self._claim.job_id, previous)

    def _save_checkpoint(self, progress: Progress) -> None:
        name = checkpoint_file(self._claim.attempt, progress.iteration)
        _put_own(self._ctx, self, "checkpoint", name, progress.state().to_bytes())
        try:
            jobs.record_checkpoint(
                self._session, self._claim, iteration=progress.iteration, name=name
            )
        except LeaseLostError:
            self.lease_lost = True
            self._ctx.storage.delete(self._claim.job_id, name)
            return
        self.committed_checkpoint(name)
        log.info(
            "job %s checkpoint at iteration %d",
            self._claim.job_id,
            progress.iteration,
            extra=self.event(EventKind.CHECKPOINT, iteration=progress.iteration),
        )

    def event(self, event: str, **fields: object) -> dict[str, object]:
        return job_event(event, self._claim.job_id, **_who(self._ctx, self._claim), **fields)

    def _best_effort(self, what: str, save: Callable[[Progress], None], progress: Progress) -> None:
        # A full disk or a database hiccup costs a preview or a checkpoint, not the job.
        try:
            save(progress)
        except LeaseLostError:
            self.lease_lost = True  # run_job logs it once the engine has stopped
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
            self.cancel_requested = jobs.heartbeat(
                session,
                self._claim,
                iteration=iteration,
                iterations=iterations,
                eta_seconds=eta,
                lease_seconds=self._ctx.settings.lease_seconds,
            )
            # From when the renewal was sent: the database's lease runs out no sooner.
            self._lease_until = now + self._ctx.settings.lease_seconds
        except LeaseLostError:
            self.lease_lost = True  # run_job logs it once the engine has stopped
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
        if self._failed_heartbeats:
            log.info(
                "job %s: heartbeat renewed the lease after %d failures",
                self._claim.job_id,
                self._failed_heartbeats,
                extra=self.event("heartbeat_recovered", failures=self._failed_heartbeats),
            )
            self._failed_heartbeats = 0
