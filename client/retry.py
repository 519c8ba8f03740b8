"""Waiting out a 429: the server's Retry-After, a bounded number of times."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from client.errors import RateLimitedError

DEFAULT_SUBMIT_RETRIES = 5  # 429s waited out before the error goes up
MAX_RETRY_WAIT_S = 60.0  # a longer Retry-After is waited this long, then asked again
NO_RETRY_AFTER_WAIT_S = 1.0  # a 429 without Retry-After

T = TypeVar("T")
RetryNotice = Callable[[RateLimitedError, float], None]


def retry_after_429(
    call: Callable[[], T],
    *,
    retries: int,
    on_retry: RetryNotice | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``call()``, again after each 429 for as long as the server's Retry-After says (at
    most ``MAX_RETRY_WAIT_S``), up to ``retries`` times; then the RateLimitedError."""
    attempt = 0
    while True:
        try:
            return call()
        except RateLimitedError as exc:
            if attempt >= retries:
                raise
            attempt += 1
            wait = exc.retry_after if exc.retry_after is not None else NO_RETRY_AFTER_WAIT_S
            wait = min(wait, MAX_RETRY_WAIT_S)
            if on_retry is not None:
                on_retry(exc, wait)
            sleep(wait)
