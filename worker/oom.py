"""Running out of device memory: telling it from other errors, freeing what can be freed,
the message a job fails with, and a fault test's hook that fakes it in a real worker.

A job's run that runs out of memory (CUDA's ``torch.OutOfMemoryError``, which the
engine turns into ``EngineOutOfMemoryError``) is tried once more after the cache is
freed: alone, for a single job (``worker.runner``); a batch is split. A second time
the job fails with ``out_of_memory``, naming its estimate and the worker's memory.

With ``STYLEQUEUE_FAULT_OOM_RUNS`` set to N (fault tests only), the first N runs of
each job in this process raise ``torch.OutOfMemoryError`` at their first iteration,
as a GPU that is too small would; unset (everywhere but those tests), nothing is
injected.
"""

from __future__ import annotations

import gc
import logging
import os
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import torch

from shared.memory_estimate import MIB
from shared.params import StyleParams
from worker.engine import EngineState
from worker.engine.errors import EngineOutOfMemoryError

if TYPE_CHECKING:
    from shared.jobs import Claim
    from worker.context import WorkerContext
    from worker.reporter import JobReporter

log = logging.getLogger(__name__)

FAULT_VARIABLE = "STYLEQUEUE_FAULT_OOM_RUNS"
OUT_OF_MEMORY = "out_of_memory"
_CPU_MESSAGES = ("can't allocate memory", "not enough memory", "out of memory")

_faked: dict[uuid.UUID, int] = {}  # runs failed on purpose, per job (fault tests)

T = TypeVar("T")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says the device (or the CPU's allocator) ran out of memory."""
    if isinstance(exc, torch.OutOfMemoryError | EngineOutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _CPU_MESSAGES)


def free_device_memory(device: torch.device) -> None:
    """Give back what a failed run left cached (the tensors it held are garbage by now)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def out_of_memory_message(
    size: int, estimate: int | None, budget: int | None, device: torch.device, *, batch: int = 1
) -> str:
    """A failed job's message: what it was estimated to need, what the worker has."""
    need = "not estimated" if estimate is None else f"estimated at {estimate / MIB:.0f} MiB"
    has = "" if budget is None else f", a budget of {budget / MIB:.0f} MiB"
    alone = "alone" if batch == 1 else f"in a batch of {batch} and again alone"
    return (
        f"the device ({device}{has}) ran out of memory twice, run {alone}, at size {size} "
        f"(the job's peak was {need}); try a smaller size or optimizer adam"
    )


def with_injected_fault(job_id: uuid.UUID, on_progress: Callable[[T], None]) -> Callable[[T], None]:
    """``on_progress`` that raises ``torch.OutOfMemoryError`` at a run's first iteration
    while the fault test's ``STYLEQUEUE_FAULT_OOM_RUNS`` asks for more; else as it is."""
    raw = os.environ.get(FAULT_VARIABLE, "")
    wanted = int(raw) if raw.strip().isdigit() else 0
    if _faked.get(job_id, 0) >= wanted:
        return on_progress

    def failing(progress: T) -> None:
        _faked[job_id] = _faked.get(job_id, 0) + 1
        log.warning("job %s: faking an out-of-memory error (fault test)", job_id)
        raise torch.OutOfMemoryError("CUDA out of memory (injected by a fault test)")

    return failing


def retry_once_alone(
    ctx: WorkerContext,
    claim: Claim,
    reporter: JobReporter,
    params: StyleParams,
    run: Callable[[EngineState | None], torch.Tensor],
    resume: EngineState | None,
) -> torch.Tensor:
    """``run(resume)``; after an out-of-memory error the cache is freed and it runs once
    more from the same start; a second one raises ``EngineOutOfMemoryError`` naming the
    job's estimate and the worker's budget (the job then fails with ``out_of_memory``)."""
    saved = None if resume is None else resume.to_bytes()  # a run may change its state
    try:
        return run(resume)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
    device = ctx.device()
    free_device_memory(device)
    log.warning(
        "job %s ran out of memory on %s; trying once more alone",
        claim.job_id,
        device,
        extra=reporter.event("out_of_memory_retry", memory_estimate=claim.memory_estimate or 0),
    )
    try:
        return run(None if saved is None else EngineState.from_bytes(saved))
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        free_device_memory(device)
        message = out_of_memory_message(
            params.size, claim.memory_estimate, ctx.memory_budget(), device
        )
        details = {"size": params.size, "memory_estimate": claim.memory_estimate}
        raise EngineOutOfMemoryError(message, details=details) from None
