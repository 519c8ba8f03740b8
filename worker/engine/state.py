"""What crosses the engine's boundary during a run: Progress reports and a resumable EngineState."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from worker.engine.errors import CheckpointCorruptError, CheckpointIncompatibleError

STATE_FORMAT = 1  # bump when the layout of EngineState changes


@dataclass(frozen=True)
class EngineState:
    """A snapshot between two iterations from which ``transfer(..., resume=state)`` continues.

    ``image`` is the optimised image of pass ``scale`` as the optimizer sees it
    (``[1,3,h,w]`` fp32 on the CPU, in 0..1); ``optimizer`` is the optimizer's
    whole state (for L-BFGS its history, so the continuation is exact);
    ``fingerprint`` identifies the parameters and input sizes it belongs to.
    Size: about 8 x history x pixels x 3 bytes for L-BFGS (the history dominates).
    """

    iteration: int  # iterations done so far, over all passes
    scale: int  # 0-based index of the pass the image belongs to
    pass_iteration: int  # iterations done within that pass
    elapsed_seconds: float
    image: torch.Tensor
    optimizer: dict[str, Any]
    fingerprint: dict[str, Any]

    def to_bytes(self) -> bytes:
        """Serialise with ``torch.save`` into memory (the engine never touches files)."""
        buffer = io.BytesIO()
        torch.save(
            {
                "format": STATE_FORMAT,
                "iteration": self.iteration,
                "scale": self.scale,
                "pass_iteration": self.pass_iteration,
                "elapsed_seconds": self.elapsed_seconds,
                "image": self.image,
                "optimizer": self.optimizer,
                "fingerprint": self.fingerprint,
            },
            buffer,
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> EngineState:
        """The inverse of ``to_bytes``; loads tensors and plain data only (``weights_only``).

        CheckpointCorruptError when ``data`` is not a saved state (torn, truncated,
        anything else); CheckpointIncompatibleError when it is one of another format.
        """
        try:
            raw = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            found = raw["format"]
        except Exception as exc:
            raise CheckpointCorruptError(_not_a_state(exc)) from None
        if found != STATE_FORMAT:
            raise CheckpointIncompatibleError(
                f"the state is of format {found!r}; this engine reads format {STATE_FORMAT}"
            )
        try:
            return cls(
                iteration=int(raw["iteration"]),
                scale=int(raw["scale"]),
                pass_iteration=int(raw["pass_iteration"]),
                elapsed_seconds=float(raw["elapsed_seconds"]),
                image=raw["image"],
                optimizer=raw["optimizer"],
                fingerprint=raw["fingerprint"],
            )
        except Exception as exc:
            raise CheckpointCorruptError(_not_a_state(exc)) from None

    def check_fits(self, fingerprint: dict[str, Any]) -> None:
        """CheckpointIncompatibleError unless this state belongs to a run with ``fingerprint``."""
        if self.fingerprint != fingerprint:
            raise CheckpointIncompatibleError("the state was saved for other parameters or inputs")


def _not_a_state(exc: Exception) -> str:
    return f"not a saved engine state ({exc.__class__.__name__}: {exc})"


@dataclass(frozen=True)
class Progress:
    """One optimizer iteration, reported to ``on_progress``.

    ``image()`` and ``state()`` compute on demand and only during the callback
    that received this Progress (afterwards the run has moved on: RuntimeError).
    """

    iteration: int  # 1-based, counted over all coarse-to-fine passes
    iterations: int  # total (== params.iterations)
    scale: int  # 0-based index of the current pass
    scales: int
    loss: float
    content_loss: float
    style_loss: float
    tv_loss: float
    elapsed_seconds: float
    eta_seconds: float | None
    _image: Callable[[], torch.Tensor] = field(repr=False, compare=False)
    _state: Callable[[], EngineState] = field(repr=False, compare=False)

    def image(self) -> torch.Tensor:
        """The current image, RGB ``[3,h,w]`` in 0..1 on the CPU (at the current pass's size)."""
        return self._image()

    def state(self) -> EngineState:
        """A resumable snapshot of the run as it stands after this iteration."""
        return self._state()
