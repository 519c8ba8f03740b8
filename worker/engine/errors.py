"""The engine's errors, all under ``shared.errors.EngineError``.

    EngineError                   the engine could not run or finish a transfer
    ├── EngineInterrupted         should_stop() said stop; ``.state`` resumes the run
    ├── EngineOutOfMemoryError    the device ran out of memory for this size
    ├── WeightsNotFoundError      the VGG19 weights file is not where it was looked for
    └── NumericalError            the optimization produced NaN or infinity

Bad parameters and inputs raise ``shared.errors.ParameterError`` and
``InvalidInputError`` (client errors), never these. A ``resume`` state that
cannot be used has errors of its own, so that a worker tells a checkpoint to
start over without from a job's bad input, while a caller of ``transfer`` still
sees a bad ``resume`` parameter:

    ParameterError
    └── CheckpointIncompatibleError  saved for other parameters, inputs or state format
    InvalidInputError
    └── CheckpointCorruptError       the bytes do not load as a saved state (torn, foreign)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.errors import EngineError, InvalidInputError, ParameterError

if TYPE_CHECKING:
    from worker.engine.state import EngineState


class EngineInterrupted(EngineError):
    """Raised when the caller's ``should_stop`` returned True; ``state`` continues the run."""

    code = "interrupted"

    def __init__(self, state: EngineState) -> None:
        super().__init__(
            f"interrupted after {state.iteration} iterations",
            details={"iteration": state.iteration},
        )
        self.state = state


class EngineOutOfMemoryError(EngineError):
    """Raised when the device runs out of memory; a smaller ``size`` or Adam may fit."""

    code = "out_of_memory"


class WeightsNotFoundError(EngineError):
    """Raised when the requested VGG19 weights are not on this machine; says how to get them."""

    code = "weights_not_found"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, details=details)


class NumericalError(EngineError):
    """Raised when the loss becomes NaN or infinite (weights far out of their useful range)."""

    code = "numerical_error"


class CheckpointIncompatibleError(ParameterError):
    """Raised when a ``resume`` state was saved for other parameters, inputs or weights,
    or in another state format: it loads, but this run cannot continue it."""

    def __init__(self, message: str) -> None:
        super().__init__("resume", message)


class CheckpointCorruptError(InvalidInputError):
    """Raised when bytes do not load as a saved engine state (torn, truncated, not one)."""

    code = "invalid_state"

    def __init__(self, message: str) -> None:
        super().__init__(f"resume: {message}", field="resume")
