"""wait()'s backoff as pure functions."""

from __future__ import annotations

import pytest

from client.polling import next_poll_delay, remaining_s


def test_the_delay_grows_while_nothing_changes_and_stops_at_the_cap() -> None:
    delays: list[float] = []
    delay = None
    for _ in range(8):
        delay = next_poll_delay(delay, initial_s=0.5, maximum_s=3.0, factor=2.0)
        delays.append(delay)
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0, 3.0, 3.0]


def test_a_change_resets_the_delay() -> None:
    assert next_poll_delay(4.0, initial_s=0.5, job_changed=True) == 0.5


def test_a_maximum_below_the_initial_delay_keeps_the_initial_delay() -> None:
    assert next_poll_delay(10.0, initial_s=10.0, maximum_s=5.0) == 10.0


@pytest.mark.parametrize(
    ("deadline", "now", "left"), [(None, 5.0, None), (10.0, 4.0, 6.0), (10.0, 12.0, 0.0)]
)
def test_remaining(deadline: float | None, now: float, left: float | None) -> None:
    assert remaining_s(deadline, now) == left
