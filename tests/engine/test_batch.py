"""transfer_batch: several jobs, one VGG19 pass per iteration, each job as if alone.

Tolerance: on the CPU a batched convolution rounds differently from a single one
(about 1e-6 relative); L-BFGS amplifies that over the iterations. With these tiny
jobs (48 px, 8 iterations) a batched job's output is within BATCH_TOLERANCE (max
absolute pixel difference, 0..1 units) of the same job run alone; a batch of one is
the single-job run bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from shared.params import parse_params
from worker.engine import EngineInterrupted, EngineState, Network, Progress, transfer
from worker.engine.batch import BatchJob, Outcome, transfer_batch

BATCH_TOLERANCE = 2e-3
TINY = {"size": 48, "scales": 1, "iterations": 8}

Load = Callable[[str], torch.Tensor]


class CountingNetwork(Network):
    """The real network, recording the batch size of every forward pass it runs."""

    def __init__(self, network: Network) -> None:
        self.__dict__.update(network.__dict__)
        self.batch_sizes: list[int] = []

    def features(self, image: torch.Tensor, layers: Any) -> dict[str, torch.Tensor]:
        self.batch_sizes.append(int(image.shape[0]))
        return super().features(image, layers)


JOBS: list[tuple[str, str, dict[str, Any]]] = [
    ("chelsea", "starry_night", {}),
    ("coffee", "shipwreck", {"iterations": 5}),  # ends early and leaves the batch
    ("chelsea", "woman-with-hat-matisse", {"optimizer": "adam", "style_weight": 3.0}),
]


def _alone(network: Network, load: Load, content: str, style: str, **params: Any) -> torch.Tensor:
    return transfer(network, load(content), [load(style)], parse_params({**TINY, **params}))


def _job(load: Load, content: str, style: str, **kw: Any) -> BatchJob:
    params = kw.pop("params", {})
    return BatchJob(load(content), [load(style)], parse_params({**TINY, **params}), **kw)


def test_a_batch_of_one_is_the_single_job_run_bit_for_bit(network: Network, load: Load) -> None:
    (out,) = transfer_batch(network, [_job(load, "chelsea", "starry_night")])
    assert isinstance(out, torch.Tensor)
    assert torch.equal(out, _alone(network, load, "chelsea", "starry_night"))


def test_each_batched_job_equals_the_job_run_alone(network: Network, load: Load) -> None:
    counting = CountingNetwork(network)
    reports: list[list[Progress]] = [[] for _ in JOBS]
    ended: list[int] = []
    jobs = [
        _job(
            load,
            c,
            s,
            params=p,
            on_progress=reports[i].append,
            on_end=lambda _, i=i: ended.append(i),
        )
        for i, (c, s, p) in enumerate(JOBS)
    ]
    outs = transfer_batch(counting, jobs)
    # One forward pass for the three jobs while all run, two once the short one left.
    assert counting.batch_sizes.count(3) == 5 and counting.batch_sizes.count(2) == 3
    assert ended[0] == 1  # the 5-iteration job ended first, on its own
    for (content, style, params), out, seen in zip(JOBS, outs, reports, strict=True):
        assert isinstance(out, torch.Tensor)
        alone = _alone(network, load, content, style, **params)
        assert out.shape == alone.shape == (3, 32, 48)
        assert float((out - alone).abs().max()) <= BATCH_TOLERANCE
        assert [p.iteration for p in seen] == list(range(1, params.get("iterations", 8) + 1))


def test_a_stop_ends_one_job_and_its_state_resumes(network: Network, load: Load) -> None:
    """A job stopped mid-batch leaves it with its own resumable state; the others run on;
    the state resumed (alone, or in another batch) finishes as the job would have."""
    saved: list[EngineState] = []

    def stop_at_3(progress: Progress) -> None:
        if progress.iteration == 3:
            saved.append(progress.state())

    outs: list[Outcome] = transfer_batch(
        network,
        [
            _job(
                load,
                "chelsea",
                "starry_night",
                on_progress=stop_at_3,
                should_stop=lambda: bool(saved),
            ),
            _job(load, "coffee", "shipwreck"),
        ],
    )
    assert isinstance(outs[0], EngineInterrupted) and outs[0].state.iteration == 3
    assert isinstance(outs[1], torch.Tensor)
    alone_other = _alone(network, load, "coffee", "shipwreck")
    assert float((outs[1] - alone_other).abs().max()) <= BATCH_TOLERANCE
    # The state from the batch resumes exactly alone (the single-job run's checkpoint).
    state = EngineState.from_bytes(saved[0].to_bytes())
    params = parse_params(TINY)
    resumed_alone = transfer(network, load("chelsea"), [load("starry_night")], params, resume=state)
    uninterrupted = _alone(network, load, "chelsea", "starry_night")
    assert float((resumed_alone - uninterrupted).abs().max()) <= BATCH_TOLERANCE
    (resumed_in_batch, _) = transfer_batch(
        network,
        [
            _job(load, "chelsea", "starry_night", resume=state),
            _job(load, "coffee", "shipwreck", params={"iterations": 2}),
        ],
    )
    assert isinstance(resumed_in_batch, torch.Tensor)
    assert float((resumed_in_batch - uninterrupted).abs().max()) <= BATCH_TOLERANCE


def test_a_bad_job_fails_alone_and_refill_takes_its_place(network: Network, load: Load) -> None:
    offered = [_job(load, "coffee", "shipwreck", params={"iterations": 3})]

    def refill(free: int) -> list[BatchJob]:
        taken = offered[:free]
        del offered[:free]
        return taken

    sliver = torch.rand(3, 64, 4)  # at 48 px its shorter side would be 3 px: refused
    bad = BatchJob(sliver, [load("starry_night")], parse_params(TINY))
    outs = transfer_batch(network, [bad, _job(load, "chelsea", "starry_night")], refill=refill)
    assert len(outs) == 3
    assert isinstance(outs[0], Exception) and "size" in str(outs[0])
    assert isinstance(outs[1], torch.Tensor) and isinstance(outs[2], torch.Tensor)
    alone = _alone(network, load, "coffee", "shipwreck", iterations=3)
    assert float((outs[2] - alone).abs().max()) <= BATCH_TOLERANCE


def test_an_empty_batch_has_no_outcomes(network: Network) -> None:
    assert transfer_batch(network, []) == []
