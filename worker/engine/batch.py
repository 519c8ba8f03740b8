"""Several jobs on one device at once: one VGG19 forward and backward per iteration for all.

Each job is the single-job run of ``core.py`` (its own passes, optimizer, progress,
stop check, checkpoint state and output), driven as a generator of steps: at every
round each job still in the batch asks for its objective to be evaluated at its
image, and the jobs whose images have the same size are evaluated together, their
images stacked into one ``[B,3,H,W]`` tensor. The losses of different jobs do not
interact, so the gradient of their sum with respect to the stack is each job's own
gradient; each job then takes its own optimizer step.

A job leaves the batch as soon as it ends (its output made, a stop asked for, an
error), and its ``on_end`` hears of it at once: the others go on. ``refill``, when
given, is asked for more jobs each time one leaves, so that a compatible job may
take the free place (see docs/engine.md, "Batches").

Output: on the CPU a batched job's image differs from the same job run alone only
by the rounding of the batched convolutions (oneDNN blocks a batch differently);
L-BFGS amplifies that a little over the iterations (measured and bounded in
``tests/engine/test_batch.py``). A job's checkpoint is the single-job ``EngineState``:
it resumes alone or in any batch.

CUDA out of memory in a batched evaluation: the evaluation has changed nothing yet,
so the group is evaluated again in two halves, and the batch keeps to groups of
that size from then on; a half that runs out of memory again ends its jobs with
``EngineOutOfMemoryError``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from shared.params import StyleParams
from worker.engine.core import Evaluated, Request, Steps, evaluate, prepare_run
from worker.engine.errors import EngineOutOfMemoryError
from worker.engine.network import Network
from worker.engine.state import EngineState, Progress
from worker.engine.style_cache import StyleTargets

# What a job ends with: its output ([3,h,w] or [4,h,w], CPU), or why it stopped.
Outcome = torch.Tensor | Exception


@dataclass(eq=False)
class BatchJob:
    """One job of a batch: ``transfer``'s arguments, and who hears of its end."""

    content: torch.Tensor
    styles: Sequence[torch.Tensor]
    params: StyleParams
    on_progress: Callable[[Progress], None] | None = None
    should_stop: Callable[[], bool] | None = None
    resume: EngineState | None = None
    style_targets: StyleTargets | None = None
    # Called once, as the job leaves the batch, with its Outcome; it must not raise.
    on_end: Callable[[Outcome], None] | None = None


@dataclass(eq=False)
class _Member:
    job: BatchJob
    index: int
    steps: Steps | None = None
    request: Request | None = None
    outcome: Outcome | None = field(default=None, repr=False)


def transfer_batch(
    network: Network,
    jobs: Sequence[BatchJob],
    *,
    refill: Callable[[int], Sequence[BatchJob]] | None = None,
    capacity: int | None = None,
) -> list[Outcome]:
    """Run ``jobs`` together on ``network``'s device; each one's Outcome, in order (the
    jobs ``refill(n)`` added come after).

    ``capacity``: the most jobs at once (default: as many as ``jobs``). ``refill(n)``
    is asked for at most ``n`` jobs before each round while a place is free, and once
    more when the last job has left: the batch ends when it is empty and ``refill``
    gives nothing."""
    batch = _Batch(network, max(capacity or len(jobs), len(jobs), 1))
    for job in jobs:
        batch.add(job)
    while True:
        if refill is not None and len(batch.active) < batch.capacity:
            for job in refill(batch.capacity - len(batch.active)):
                batch.add(job)
        if not batch.active:
            break
        batch.round()
    return [m.outcome if m.outcome is not None else _lost() for m in batch.members]


def _lost() -> Exception:
    return RuntimeError("the batch ended without an outcome for this job")


class _Batch:
    def __init__(self, network: Network, capacity: int) -> None:
        self.network = network
        self.capacity = capacity
        self.members: list[_Member] = []
        self.active: list[_Member] = []
        self.max_group = max(1, capacity)

    def add(self, job: BatchJob) -> None:
        member = _Member(job, len(self.members))
        self.members.append(member)
        try:
            run = prepare_run(self.network, job.content, job.styles, job.params, job.style_targets)
            member.steps = run.steps(job.on_progress, job.should_stop, job.resume)
            member.request = next(member.steps)
        except StopIteration as done:
            self._end(member, done.value)
            return
        except Exception as exc:
            self._end(member, self._failed(member, exc))
            return
        self.active.append(member)

    def round(self) -> None:
        """One iteration of every job in the batch, same-sized images evaluated together."""
        groups: dict[tuple[int, ...], list[_Member]] = {}
        for member in self.active:
            assert member.request is not None
            groups.setdefault(tuple(member.request[1].shape), []).append(member)
        for group in groups.values():
            for start in range(0, len(group), self.max_group):
                chunk = group[start : start + self.max_group]
                for member, result in zip(chunk, self._evaluate(chunk), strict=True):
                    self._advance(member, result)

    def _evaluate(self, chunk: list[_Member]) -> list[Evaluated | Exception]:
        try:
            return _evaluate_all(chunk)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
        if len(chunk) == 1:
            return [self._out_of_memory(chunk[0])]
        # Split once: each half evaluated again; the batch keeps to that size from now on.
        half = (len(chunk) + 1) // 2
        self.max_group = half
        results: list[Evaluated | Exception] = []
        for part in (chunk[:half], chunk[half:]):
            try:
                results.extend(_evaluate_all(part))
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                results.extend(self._out_of_memory(m) for m in part)
        return results

    def _out_of_memory(self, member: _Member) -> EngineOutOfMemoryError:
        size = member.job.params.size
        return EngineOutOfMemoryError(
            f"the device ran out of memory at size {size}; try a smaller size or Adam",
            details={"size": size, "device": str(self.network.device)},
        )

    def _failed(self, member: _Member, exc: Exception) -> Exception:
        if isinstance(exc, torch.cuda.OutOfMemoryError):
            torch.cuda.empty_cache()
            return self._out_of_memory(member)
        return exc

    def _advance(self, member: _Member, result: Evaluated | Exception) -> None:
        assert member.steps is not None
        if isinstance(result, Exception):
            member.steps.close()
            self._leave(member, result)
            return
        try:
            member.request = member.steps.send(result)
        except StopIteration as done:
            self._leave(member, done.value)
        except Exception as exc:
            self._leave(member, self._failed(member, exc))

    def _leave(self, member: _Member, outcome: Outcome) -> None:
        self.active.remove(member)
        self._end(member, outcome)

    def _end(self, member: _Member, outcome: Outcome) -> None:
        member.outcome = outcome
        member.request = None
        if member.job.on_end is not None:
            member.job.on_end(outcome)


def _evaluate_all(chunk: Sequence[_Member]) -> list[Evaluated | Exception]:
    requests = [m.request for m in chunk if m.request is not None]
    if len(requests) == 1:
        return [evaluate(*requests[0])]
    return list(evaluate_together(requests))


def evaluate_together(requests: Sequence[Request]) -> list[Evaluated]:
    """The loss terms and gradient of each (objective, image) pair, all images of one size,
    from one forward and one backward pass over the stacked images."""
    objectives = [objective for objective, _ in requests]
    leaf = torch.cat([image.detach() for _, image in requests]).requires_grad_(True)
    feats = objectives[0].network.features(leaf, objectives[0].layers)
    terms = [
        objective.of_features({k: v[i : i + 1] for k, v in feats.items()}, leaf[i : i + 1])
        for i, objective in enumerate(objectives)
    ]
    (grad,) = torch.autograd.grad(torch.stack([t.total for t in terms]).sum(), leaf)
    return [(t, grad[i : i + 1].contiguous()) for i, t in enumerate(terms)]
