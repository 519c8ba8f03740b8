"""A worker's batch: several claimed jobs run together on its device (STYLEQUEUE_BATCH_MAX).

The delivery's first job is claimed as always (``shared.fair_share.claim_next``);
then the worker takes more jobs into the batch, up to STYLEQUEUE_BATCH_MAX, with
``fair_share.claim_batch_members``: the next jobs of the fair order, while they have
the first job's output shape and fit the worker's memory budget beside the jobs it
runs. The first job that does not ends the search, so a batch never jumps the fair
order; a job never waits for a batch to fill (the batch starts with whatever was
queued).

Each job of the batch is an ``Attempt`` of its own (``worker.runner``): its own
claim, database session, reporter (progress, previews, checkpoints named by its
attempt), lease thread, stop reason (a cancel, a deadline, a lost lease stops that
job alone) and end, written by ``runner.conclude`` as for a job run alone. The
engine (``worker.engine.batch``) evaluates the same-sized images of all jobs in one
VGG19 forward and backward pass per iteration, and tells each job's end as soon as
it leaves; its place is then offered to the next job of the fair order (once
more before every round while a place is free, at most every
``LOOK_SECONDS`` when no job left): a compatible job queued meanwhile joins the
running batch.

What is kept per job, and so survives a crash of the process: its checkpoint,
which is the single-job engine state and resumes alone or in any batch.

Out of memory: the engine evaluates a group that ran out again in two halves (a
smaller batch) and ends the jobs of a half that runs out again with
``out_of_memory``. Such a job is then run once more alone from its last
checkpoint, after the batch has drained (it takes no new jobs meanwhile); a third
time, it fails.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

import torch

from shared import fair_share
from shared.memory_estimate import batch_peak_bytes
from shared.params import StyleParams
from worker import oom
from worker.context import WorkerContext
from worker.engine import EngineState, transfer
from worker.engine.batch import BatchJob, transfer_batch
from worker.engine.batch import Outcome as EngineOutcome
from worker.engine.errors import (
    CheckpointIncompatibleError,
    EngineOutOfMemoryError,
)
from worker.oom import free_device_memory, is_out_of_memory, out_of_memory_message
from worker.runner import Attempt, Outcome, load_checkpoint, read_checkpoint

log = logging.getLogger(__name__)

LOOK_SECONDS = 1.0  # how often a batch with a free place looks for a job to take it


def run_batch(ctx: WorkerContext, first: Attempt) -> list[tuple[uuid.UUID, Outcome]]:
    """Run ``first`` (claimed and begun) and the jobs that join it as one batch; each job's
    id and outcome, in the order they were claimed."""
    with contextlib.ExitStack() as stack:
        batch = _WorkerBatch(ctx, first, stack)
        try:
            jobs = [batch.job_of(first), *batch.take(ctx.settings.batch_max - 1)]
            transfer_batch(
                ctx.network(),
                [job for job in jobs if job is not None],
                refill=batch.refill,
                capacity=ctx.settings.batch_max,
            )
            batch.run_the_rest_alone()
        except Exception as exc:  # a bug: each job still running ends with it, as alone
            log.exception("the batch of %s failed", batch.shape)
            batch.end_all(exc)
        except BaseException:
            batch.abandon_all()  # their leases run out; the reconciler sends them again
            raise
        return batch.outcomes()


class _WorkerBatch:
    def __init__(self, ctx: WorkerContext, first: Attempt, stack: contextlib.ExitStack) -> None:
        self.ctx = ctx
        self.shape = first.claim.batch_shape
        self.first = first.job_id
        self._stack = stack
        self._claims = stack.enter_context(ctx.db.session())  # for the joining jobs' claims
        self._order: list[Attempt] = [first]
        self._running: set[uuid.UUID] = {first.job_id}
        self._ended: dict[uuid.UUID, Outcome] = {}
        self._pending: list[BatchJob] = []  # to add to the batch at the next round
        self._alone: list[Attempt] = []  # out of memory in the batch: once more alone after it
        self._last_look = time.monotonic()
        self._left_since_look = False

    def outcomes(self) -> list[tuple[uuid.UUID, Outcome]]:
        return [(a.job_id, self._ended.get(a.job_id, Outcome.LEASE_LOST)) for a in self._order]

    # ------------------------------------------------------------ joining

    def take(self, count: int) -> list[BatchJob | None]:
        """Claim up to ``count`` more jobs (the next of the fair order, while compatible)."""
        if count < 1 or self.shape is None or self.ctx.shutting_down.is_set():
            return []
        ctx = self.ctx
        running = [a for a in self._order if a.job_id in self._running]
        budget = ctx.memory_budget()
        used = batch_peak_bytes([a.claim.memory_estimate for a in running])
        try:
            claims = fair_share.claim_batch_members(
                self._claims,
                shape=self.shape,
                count=count,
                memory_left=None if budget is None else budget - used,
                batch_with=self.first,
                worker=ctx.name,
                lease_seconds=ctx.settings.lease_seconds,
                max_attempts=ctx.settings.max_attempts,
                pid=ctx.pid,
                hostname=ctx.hostname,
                max_running=ctx.settings.max_running,
                memory_budget=budget,
                queue_name=ctx.settings.redis_prefix,
            )
        except Exception:  # the database away: the batch goes on with what it has
            with contextlib.suppress(Exception):
                self._claims.rollback()
            log.warning("could not look for jobs to join the batch", exc_info=True)
            return []
        joined = []
        for claim in claims:
            session = self._stack.enter_context(ctx.db.session())
            attempt = Attempt(ctx, session, claim)
            attempt.begin()
            self._order.append(attempt)
            self._running.add(attempt.job_id)
            log.info(
                "job %s joins the batch of %s (%d running)",
                claim.job_id,
                self.shape,
                len(self._running),
                extra=attempt.reporter.event("batched", batch=len(self._running)),
            )
            joined.append(self.job_of(attempt))
        return joined

    def refill(self, free: int) -> Sequence[BatchJob]:
        """The engine's ask for up to ``free`` jobs: restarts first, then new claims (not
        while a job waits to run alone, and at most every LOOK_SECONDS unless one left)."""
        given, self._pending = self._pending[:free], self._pending[free:]
        free -= len(given)
        active = len(self._running) - len(self._alone)
        now = time.monotonic()
        due = self._left_since_look or now - self._last_look >= LOOK_SECONDS
        if free > 0 and active > 0 and not self._alone and due:
            self._last_look, self._left_since_look = now, False
            given += [job for job in self.take(free) if job is not None]
        return given

    # ------------------------------------------------------------ one job

    def job_of(self, attempt: Attempt, *, fresh: bool = False) -> BatchJob | None:
        """The engine's view of an attempt: its inputs, checkpoint and callbacks; None when
        it ended before it could run (its inputs unreadable, its lease gone)."""
        try:
            params, content, styles = attempt.inputs()
            resume = None if fresh else self._resume(attempt)
        except Exception as exc:
            self._end(attempt, exc)
            return None
        return BatchJob(
            content,
            styles,
            params,
            resume=resume,
            on_end=functools.partial(self._on_end, attempt, resume is not None),
            **self._engine_callbacks(attempt),
        )

    def _resume(self, attempt: Attempt) -> EngineState | None:
        if attempt.reporter.checkpoint_name == attempt.claim.checkpoint_file:
            # What the claim found: an earlier attempt's, resumed (and recorded) as alone.
            return load_checkpoint(self.ctx, attempt.session, attempt.claim, attempt.reporter)
        return self._latest_checkpoint(attempt)

    def _latest_checkpoint(self, attempt: Attempt) -> EngineState | None:
        """This attempt's latest committed checkpoint (None: none yet, or unreadable)."""
        name = attempt.reporter.checkpoint_name
        return None if name is None else read_checkpoint(self.ctx, attempt.reporter, name)

    def _engine_callbacks(self, attempt: Attempt) -> dict[str, Any]:
        """What the engine is given for a job, alone or in the batch."""
        return {
            "on_progress": oom.with_injected_fault(attempt.job_id, attempt.reporter.on_progress),
            "should_stop": attempt.reporter.should_stop,
            "style_targets": attempt.targets,
        }

    def _on_end(self, attempt: Attempt, resumed: bool, outcome: EngineOutcome) -> None:
        """A job left the engine's batch: its end written now (the others go on)."""
        self._left_since_look = True
        try:
            if isinstance(outcome, CheckpointIncompatibleError) and resumed:
                # Saved by a worker with other weights or another engine version: start over.
                log.warning(
                    "job %s: checkpoint does not fit (%s); starting over",
                    attempt.job_id,
                    outcome,
                    extra=attempt.reporter.event("checkpoint_discarded"),
                )
                job = self.job_of(attempt, fresh=True)
                if job is not None:
                    self._pending.append(job)
                return
            if isinstance(outcome, Exception) and is_out_of_memory(outcome):
                free_device_memory(self.ctx.device())
                log.warning(
                    "job %s ran out of memory in a batch of %s; it runs once more alone",
                    attempt.job_id,
                    self.shape,
                    extra=attempt.reporter.event(
                        "out_of_memory_retry", memory_estimate=attempt.claim.memory_estimate or 0
                    ),
                )
                self._alone.append(attempt)
                return
            self._end(attempt, outcome)
        except Exception:  # never into the engine: the job's lease runs out, it is retried
            log.exception("job %s: could not end its batched run", attempt.job_id)
            self._ended.setdefault(attempt.job_id, Outcome.LEASE_LOST)
            self._running.discard(attempt.job_id)

    def _end(self, attempt: Attempt, result: torch.Tensor | Exception) -> None:
        self._running.discard(attempt.job_id)
        self._ended[attempt.job_id] = attempt.end(result)
        if self._running:  # the registry's current job: one the worker still runs
            self.ctx.registry().job_started(next(iter(self._running)))

    def end_all(self, exc: Exception) -> None:
        for attempt in self._order:
            if attempt.job_id in self._running:
                self._end(attempt, exc)

    def abandon_all(self) -> None:
        for attempt in self._order:
            if attempt.job_id in self._running:
                attempt.abandon()

    def run_the_rest_alone(self) -> None:
        """The jobs that ran out of memory in the batch, each once more on its own."""
        for attempt in self._alone:
            try:
                output: torch.Tensor | Exception = self._alone_once(attempt)
            except Exception as exc:
                output = exc
            self._end(attempt, output)

    def _alone_once(self, attempt: Attempt) -> torch.Tensor:
        params, content, styles = attempt.inputs()
        resume = self._latest_checkpoint(attempt)
        try:
            return transfer(
                self.ctx.network(),
                content,
                styles,
                params,
                resume=resume,
                **self._engine_callbacks(attempt),
            )
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            free_device_memory(self.ctx.device())
            raise _out_of_memory(self.ctx, attempt, params, len(self._order)) from None


def _out_of_memory(
    ctx: WorkerContext, attempt: Attempt, params: StyleParams, batch: int
) -> EngineOutOfMemoryError:
    estimate = attempt.claim.memory_estimate
    message = out_of_memory_message(
        params.size, estimate, ctx.memory_budget(), ctx.device(), batch=max(2, batch)
    )
    return EngineOutOfMemoryError(
        message, details={"size": params.size, "memory_estimate": estimate}
    )
