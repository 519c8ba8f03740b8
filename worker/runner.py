"""One delivery of a job's message, run to its end: claim, load inputs, transfer, finish.

The engine is pure compute; every state change goes through ``shared.jobs``.
What a run tells the database and the files while it holds the lease is
``worker.reporter``; the lease thread is ``worker.lease``; the wait for a
database that is down is ``worker.db_retry``. When the engine stops early, the
reporter's one ``StopReason`` says which outcome to write (``_stopped``).

Each claimed job is an ``Attempt``: alone it runs here (``run_alone``); in a batch
(STYLEQUEUE_BATCH_MAX over 1) ``worker.batch_runner`` runs several, and each ends
through the same ``Attempt.end`` and ``conclude``.

Some 500 lines, on purpose: every way an attempt can end (a success, each stop
reason, a failure, a hand-back) is written here side by side, so that what an
attempt leaves behind is read in one file.
"""

from __future__ import annotations

import logging
import uuid
from enum import StrEnum
from typing import assert_never

import torch
from sqlalchemy.orm import Session

from shared import fair_share, jobs, leases
from shared.errors import ClientError, EngineError, LeaseLostError, NotFoundError, StorageError
from shared.images import decode_image
from shared.jobs import Claim
from shared.logging import job_event
from shared.models import EventKind
from shared.params import StyleParams
from shared.storage import (
    CHECKPOINT_FILE,
    CONTENT_FILE,
    checkpoint_file,
    result_file,
    style_file,
)
from worker import oom
from worker.attempts import log_too_many_attempts
from worker.context import WorkerContext
from worker.db_retry import DatabaseWaitAbandoned, retry_while_unavailable
from worker.engine import (
    EngineInterrupted,
    EngineState,
    encode_png,
    pil_to_tensor,
    transfer,
)
from worker.engine.errors import CheckpointCorruptError, CheckpointIncompatibleError
from worker.engine.style_cache import StyleTargets
from worker.followers import settle_after
from worker.lease import LeaseKeeper
from worker.reporter import JobReporter, StopReason

log = logging.getLogger(__name__)

UNEXPECTED_ERROR_CODE = "internal_error"
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


def run_job(
    ctx: WorkerContext, job_id: uuid.UUID, claimed: list[uuid.UUID] | None = None
) -> Outcome:
    """Run one delivery of a job's message to its end. Never raises for a job's own failure.

    The job run is the first of the fair order (``shared.fair_share``), which need not
    be ``job_id``: its id is appended to ``claimed``. With STYLEQUEUE_BATCH_MAX over 1
    other jobs may run with it (``worker.batch_runner``): their ids follow in
    ``claimed``; the outcome returned is the first job's (``run_delivery`` has each's).
    """
    ended = run_delivery(ctx, job_id)
    if claimed is not None:
        claimed.extend(done for done, outcome in ended if outcome is not Outcome.SKIPPED)
    return ended[0][1]


def run_delivery(ctx: WorkerContext, job_id: uuid.UUID) -> list[tuple[uuid.UUID, Outcome]]:
    """Run one delivery of a job's message: the job the fair order gives this worker, alone
    or with others (``worker.batch_runner``); each job run and how it ended, the first
    claimed first (a delivery that claimed nothing: the message's job, and why)."""
    with ctx.db.session() as session:
        max_attempts = ctx.settings.max_attempts
        try:
            # The database down (a restart, a failover): wait for it with the
            # message in hand, unacknowledged, rather than drop the message.
            claim = retry_while_unavailable(
                session,
                lambda: fair_share.claim_next(
                    session,
                    job_id,
                    worker=ctx.name,
                    lease_seconds=ctx.settings.lease_seconds,
                    max_attempts=max_attempts,
                    pid=ctx.pid,
                    hostname=ctx.hostname,
                    max_running=ctx.settings.max_running,
                    queue_name=ctx.settings.redis_prefix,
                    memory_budget=ctx.memory_budget(),
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
            return [(job_id, Outcome.RELEASED)]
        if claim is None:
            exhausted = jobs.fail_exhausted_job(session, job_id, max_attempts=max_attempts)
            if exhausted is not None:
                ctx.storage.delete_checkpoints(job_id)  # a failed job is never resumed
                log_too_many_attempts(exhausted, worker=ctx.name)
                settle_after(ctx, session, job_id)
                return [(job_id, Outcome.FAILED)]
            log.info(
                "job %s is not claimable (running elsewhere, finished or unknown)",
                job_id,
                extra=job_event(Outcome.SKIPPED, job_id, worker=ctx.name),
            )
            return [(job_id, Outcome.SKIPPED)]
        attempt = Attempt(ctx, session, claim)
        attempt.begin()
        if ctx.settings.batch_max > 1 and claim.batch_shape is not None:
            from worker.batch_runner import run_batch

            return run_batch(ctx, attempt)
        return [(claim.job_id, attempt.run_alone())]


class Attempt:
    """One claimed job's attempt on this worker: its reporter, its lease thread, and its end.

    ``begin`` starts the lease thread; ``end`` writes the outcome the run's result
    calls for (``conclude``) and stops the lease thread, whatever happens. Alone, the
    attempt runs with ``run_alone``; in a batch, ``worker.batch_runner`` runs it.
    """

    def __init__(self, ctx: WorkerContext, session: Session, claim: Claim) -> None:
        self.ctx = ctx
        self.session = session
        self.claim = claim
        self.reporter = JobReporter(ctx, session, claim)
        self._keeper = LeaseKeeper(ctx, self.reporter)
        # The process's cache of style targets, counted for this job.
        self.targets = ctx.style_targets()
        self._ended = False

    @property
    def job_id(self) -> uuid.UUID:
        return self.claim.job_id

    def begin(self) -> None:
        ctx, claim = self.ctx, self.claim
        log.info(
            "job %s claimed by %s (pool process %d), attempt %d",
            claim.job_id,
            ctx.name,
            ctx.pid,
            claim.attempt,
            extra=self.reporter.event(EventKind.CLAIMED),
        )
        self._keeper.start()
        ctx.registry().job_started(claim.job_id)

    def inputs(self) -> tuple[StyleParams, torch.Tensor, list[torch.Tensor]]:
        """The job's parameters and decoded inputs; then a check that the lease holds."""
        params = StyleParams.model_validate(self.claim.params)
        content, styles = _load_inputs(self.ctx, self.claim)
        self.reporter.check_lease()
        return params, content, styles

    def run_alone(self) -> Outcome:
        try:
            params, content, styles = self.inputs()
            output = _transfer(
                self.ctx, self.session, self.claim, self.reporter, params, content, styles,
                self.targets,
            )  # fmt: skip
        except Exception as exc:
            return self.end(exc)
        except BaseException:
            self.abandon()
            raise
        return self.end(output)

    def abandon(self) -> None:
        """Stop renewing without writing an outcome (the process is going): the lease
        runs out and the job is claimed again."""
        self._stop_renewing(Outcome.LEASE_LOST)

    def end(self, result: torch.Tensor | Exception) -> Outcome:
        """The attempt's end: what ``result`` (the output, or why the run stopped) calls for
        written under the lease, then the lease thread stopped. Once only."""
        assert not self._ended, "an attempt ends once"
        outcome = Outcome.LEASE_LOST
        try:
            outcome = conclude(
                self.ctx, self.session, self.claim, self.reporter, self.targets, result
            )
        except LeaseLostError:
            log.warning(
                "job %s: lease lost; stopping without writing",
                self.claim.job_id,
                extra=self.reporter.event(Outcome.LEASE_LOST),
            )
        finally:
            self._stop_renewing(outcome)
        return outcome

    def _stop_renewing(self, outcome: Outcome) -> None:
        self._ended = True
        self._keeper.stop()
        self.reporter.flush_losses()
        self.ctx.registry().job_ended(
            succeeded=outcome is Outcome.SUCCEEDED, failed=outcome is Outcome.FAILED
        )


def conclude(
    ctx: WorkerContext,
    session: Session,
    claim: Claim,
    reporter: JobReporter,
    targets: StyleTargets,
    result: torch.Tensor | Exception,
) -> Outcome:
    """Write what the end of a run calls for: its output stored and the success recorded,
    or the outcome of the exception it stopped with. Raises LeaseLostError when the
    lease is lost (nothing more may be written)."""
    name = result_file(claim.attempt)
    if isinstance(result, torch.Tensor):
        try:
            reporter.put_own("result", name, encode_png(result))
        except Exception as exc:
            result = exc
    if isinstance(result, Exception):
        return _ended_by(ctx, session, claim, reporter, result)
    # The result is stored: the database down now only delays the success.
    try:
        reporter.write(
            "record the success",
            lambda: jobs.finish_job(session, claim, result_file=name, event_data=targets.counts()),
        )
    except LeaseLostError as exc:
        reporter.forget_own(name, exc)
        raise
    ctx.storage.delete_checkpoints(claim.job_id)
    settle_after(ctx, session, claim.job_id)  # its followers: a copy of the result each
    ctx.log_style_cache(claim.job_id, targets, reporter.event("style_cache"))
    log.info("job %s succeeded", claim.job_id, extra=reporter.event(EventKind.SUCCEEDED))
    return Outcome.SUCCEEDED


def _ended_by(
    ctx: WorkerContext, session: Session, claim: Claim, reporter: JobReporter, exc: Exception
) -> Outcome:
    """The outcome of a run that ended with ``exc`` instead of an output."""
    if isinstance(exc, EngineInterrupted):
        return _stopped(ctx, session, claim, reporter, exc.state)
    if isinstance(exc, EngineError | ClientError):
        return _fail(ctx, session, claim, reporter, exc.code, exc.message)
    if isinstance(exc, LeaseLostError):
        raise exc
    if isinstance(exc, StorageError):
        return _defer(ctx, session, claim, reporter, exc)
    log.error(
        "job %s: unexpected error",
        claim.job_id,
        exc_info=exc,
        extra=reporter.event("unexpected_error"),
    )
    return _fail(
        ctx,
        session,
        claim,
        reporter,
        UNEXPECTED_ERROR_CODE,
        f"the worker hit an unexpected error ({exc.__class__.__name__}); it has been logged",
    )


def _stopped(
    ctx: WorkerContext, session: Session, claim: Claim, reporter: JobReporter, state: EngineState
) -> Outcome:
    """The engine stopped before its last iteration: the outcome its stop reason calls for."""
    reason = reporter.stop_reason
    assert reason is not None, "the engine stops early only when should_stop() says so"
    match reason:
        case StopReason.LEASE_LOST | StopReason.LEASE_RAN_OUT:
            # Whether replaced or cut off from the database, this attempt commits
            # nothing more: the next one resumes from the last committed checkpoint.
            raise LeaseLostError(f"lost the lease on job {claim.job_id}")
        case StopReason.TIMED_OUT:
            limit = ctx.settings.max_run_seconds
            message = (
                f"the job ran longer than the maximum run time ({limit:g} s, "
                f"STYLEQUEUE_MAX_RUN_SECONDS) and was stopped at iteration {state.iteration}"
            )
            return _fail(ctx, session, claim, reporter, TIMEOUT_ERROR_CODE, message)
        case StopReason.CANCELED | StopReason.DEADLINE:
            return _cancel(ctx, session, claim, reporter, state, reason)
        case StopReason.SHUTDOWN:
            return _release(ctx, session, claim, reporter, state)
        case _:
            assert_never(reason)


def _cancel(
    ctx: WorkerContext,
    session: Session,
    claim: Claim,
    reporter: JobReporter,
    state: EngineState,
    reason: StopReason,
) -> Outcome:
    stopped_at = state.iteration
    late = reason is StopReason.DEADLINE
    reporter.write(
        "record the cancel",
        lambda: jobs.cancel_running_job(session, claim, iteration=stopped_at, deadline_passed=late),
    )
    # A follower takes the run over from where it stopped.
    settle_after(ctx, session, claim.job_id, checkpoint=lambda: (stopped_at, state.to_bytes()))
    ctx.storage.delete_checkpoints(claim.job_id)
    log.info(
        "job %s canceled at iteration %d",
        claim.job_id,
        stopped_at,
        extra=reporter.event(EventKind.CANCELED, iteration=stopped_at),
    )
    return Outcome.CANCELED


def _release(
    ctx: WorkerContext, session: Session, claim: Claim, reporter: JobReporter, state: EngineState
) -> Outcome:
    # The checkpoint first, named by the row in the same statement that hands the
    # job back: once the row says queued, another worker may claim it.
    name: str | None = checkpoint_file(claim.attempt, state.iteration)
    assert name is not None
    try:
        reporter.put_own("checkpoint", name, state.to_bytes())
    except (OSError, StorageError):
        log.warning(
            "job %s: could not store its checkpoint; handing it back without",
            claim.job_id,
            exc_info=True,
            extra=reporter.event("checkpoint_failed"),
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
            reporter.forget_own(name, exc)
        raise
    if name is not None:
        reporter.committed_checkpoint(name)
    log.info(
        "job %s released at iteration %d: the worker is shutting down",
        claim.job_id,
        state.iteration,
        extra=reporter.event(EventKind.RELEASED, iteration=state.iteration),
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
        extra=reporter.event("storage_error", error_code=exc.code, iteration=iteration),
    )
    reporter.write(
        "hand the job back",
        lambda: jobs.release_job(session, claim, iteration=iteration, reason=exc.code),
    )
    return Outcome.DEFERRED


def _transfer(
    ctx: WorkerContext,
    session: Session,
    claim: Claim,
    reporter: JobReporter,
    params: StyleParams,
    content: torch.Tensor,
    styles: list[torch.Tensor],
    targets: StyleTargets,
) -> torch.Tensor:
    def run(resume: EngineState | None) -> torch.Tensor:
        return transfer(
            ctx.network(),
            content,
            styles,
            params,
            on_progress=oom.with_injected_fault(claim.job_id, reporter.on_progress),
            should_stop=reporter.should_stop,
            resume=resume,
            style_targets=targets,
        )

    resume = load_checkpoint(ctx, session, claim, reporter)
    if resume is None:
        return oom.retry_once_alone(ctx, claim, reporter, params, run, None)
    try:
        return oom.retry_once_alone(ctx, claim, reporter, params, run, resume)
    except CheckpointIncompatibleError as exc:
        # Saved by a worker with other weights or another engine version: start over.
        log.warning(
            "job %s: checkpoint does not fit (%s); starting over",
            claim.job_id,
            exc,
            extra=reporter.event("checkpoint_discarded"),
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
    settle_after(ctx, session, claim.job_id)  # its followers fail with it
    log.info(
        "job %s failed: %s: %s",
        claim.job_id,
        code,
        message,
        extra=reporter.event(EventKind.FAILED, error_code=code),
    )
    return Outcome.FAILED


def _load_inputs(ctx: WorkerContext, claim: Claim) -> tuple[torch.Tensor, list[torch.Tensor]]:
    max_pixels = ctx.settings.max_image_pixels

    def load(name: str, field_name: str) -> torch.Tensor:
        data = ctx.storage.get(claim.job_id, name)
        # A content's transparency is kept (the result has the same alpha); a style's is not.
        keep_alpha = field_name == "content"
        decoded = decode_image(data, field=field_name, max_pixels=max_pixels, keep_alpha=keep_alpha)
        return pil_to_tensor(decoded)

    content = load(CONTENT_FILE, "content")
    styles = [load(style_file(i), f"style[{i}]") for i in range(claim.n_styles)]
    return content, styles


def read_checkpoint(ctx: WorkerContext, reporter: JobReporter, name: str) -> EngineState | None:
    """The engine state in the job's checkpoint ``name``; None (and a warning) when it is
    gone, torn, or of another state format: the run starts over."""
    try:
        return EngineState.from_bytes(ctx.storage.get(reporter.job_id, name))
    except (NotFoundError, CheckpointCorruptError, CheckpointIncompatibleError) as exc:
        log.warning(
            "job %s: ignoring its checkpoint (%s)",
            reporter.job_id,
            exc.message,
            extra=reporter.event("checkpoint_discarded"),
        )
        return None


def load_checkpoint(
    ctx: WorkerContext, session: Session, claim: Claim, reporter: JobReporter
) -> EngineState | None:
    """The claim's committed checkpoint, read and its resume recorded (None: none)."""
    name = claim.checkpoint_file
    if name is None:
        # A job from before the row named its checkpoint: the one fixed name it had.
        if claim.attempt <= 1 or not ctx.storage.exists(claim.job_id, CHECKPOINT_FILE):
            return None
        name = CHECKPOINT_FILE
    state = read_checkpoint(ctx, reporter, name)
    if state is None:
        return None
    log.info(
        "job %s resumed from iteration %d",
        claim.job_id,
        state.iteration,
        extra=reporter.event(EventKind.RESUMED, iteration=state.iteration),
    )
    reporter.write(
        "record the resume",
        lambda: leases.record_resumed(session, claim, iteration=state.iteration),
    )
    return state
