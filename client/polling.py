"""How often wait() polls: a small backoff, as pure functions with named constants."""

from __future__ import annotations

DEFAULT_POLL_INTERVAL_S = 0.5  # first delay between two polls of a job
MAX_POLL_INTERVAL_S = 5.0  # the backoff never waits longer than this between polls
POLL_BACKOFF_FACTOR = 1.5  # each unchanged poll waits this much longer than the last


def next_poll_delay(
    previous_s: float | None,
    *,
    initial_s: float = DEFAULT_POLL_INTERVAL_S,
    maximum_s: float = MAX_POLL_INTERVAL_S,
    factor: float = POLL_BACKOFF_FACTOR,
    job_changed: bool = False,
) -> float:
    """The delay before the next poll.

    Starts at ``initial_s`` and grows by ``factor`` while the job does not
    change, up to ``maximum_s``. A job that moved (new status or progress)
    resets the delay: it is running, so the next change is near, and a
    progress bar should not freeze for seconds. ``maximum_s`` below
    ``initial_s`` means ``initial_s`` (a caller asking for slow polls gets them).
    """
    ceiling = max(maximum_s, initial_s)
    if previous_s is None or job_changed:
        return initial_s
    return min(previous_s * factor, ceiling)


def remaining_s(deadline: float | None, now: float) -> float | None:
    """Seconds left until ``deadline`` (a monotonic time), never negative; None means no limit."""
    if deadline is None:
        return None
    return max(0.0, deadline - now)
