"""The submit's limits and deadline on the wire: the ``RateLimit-Policy``, ``RateLimit``
and ``Retry-After`` headers, and the ``Cancel-After`` header.

The rule is ``shared.client_limits``; this module reads a client's limits (kept
a few seconds per process, so that ``stylequeue keys update`` takes effect
everywhere within ``LIMITS_CACHE_SECONDS``), and writes what the rule answered
as the headers of draft-ietf-httpapi-ratelimit-headers (its structured-field
form)::

    RateLimit-Policy: "burst";q=20;w=10, "queued";q=100
    RateLimit: "burst";r=19;t=1, "queued";r=99

``burst``: ``q`` submits at once, refilled at the rate (``w``: the seconds a
full refill takes); ``r`` left now, ``t`` seconds until the bucket is full
again. ``queued``: at most ``q`` jobs waiting, ``r`` more may be queued.
"""

from __future__ import annotations

import math
import re
import threading
import time
from datetime import datetime, timedelta

from shared.client_limits import ClientLimits, SubmitQuota, check_submit, read_limits
from shared.errors import InvalidInputError
from shared.models import utcnow

LIMITS_CACHE_SECONDS = 5.0
MAX_CANCEL_AFTER_SECONDS = 30 * 24 * 3600  # 30 days: longer than any job is kept waiting
_SECONDS = re.compile(r"[0-9]+(\.[0-9]+)?")


class _LimitsCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, int], tuple[float, ClientLimits]] = {}

    def get(self, key: tuple[str, int]) -> ClientLimits | None:
        with self._lock:
            entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, key: tuple[str, int], limits: ClientLimits) -> None:
        with self._lock:
            if len(self._entries) > 4096:
                self._entries.clear()
            self._entries[key] = (time.monotonic() + LIMITS_CACHE_SECONDS, limits)


_cache = _LimitsCache()


def check_submit_limits(client_id: int) -> SubmitQuota:
    """The client's limits checked for one submit: a 429 (``TooManyRequestsError``) if over."""
    from api.services import read_session, services

    svc = services()
    key = (svc.settings.database_url, client_id)
    limits = _cache.get(key)
    if limits is None:
        limits = read_limits(read_session(), client_id, svc.settings)
        _cache.put(key, limits)
    return check_submit(read_session(), client_id, limits, svc.rate_bucket, svc.db)


def quota_headers(quota: SubmitQuota) -> dict[str, str]:
    """The ``RateLimit-Policy`` and ``RateLimit`` headers for where the client stands."""
    limits = quota.limits
    policies: list[str] = []
    states: list[str] = []
    if limits.rate_limited:
        window = max(1, math.ceil(limits.burst / limits.rate))
        policies.append(f'"burst";q={limits.burst};w={window}')
        if quota.rate is not None:
            reset = math.ceil(quota.rate.reset_seconds)
            states.append(f'"burst";r={quota.rate.remaining};t={reset}')
    if limits.max_queued > 0:
        policies.append(f'"queued";q={limits.max_queued}')
        if quota.queued is not None:
            states.append(f'"queued";r={max(0, limits.max_queued - quota.queued)}')
    headers = {}
    if policies:
        headers["RateLimit-Policy"] = ", ".join(policies)
    if states:
        headers["RateLimit"] = ", ".join(states)
    return headers


def read_cancel_after(raw: str | None, now: datetime | None = None) -> datetime | None:
    """The deadline a ``Cancel-After: SECONDS`` header sets (None: no header).

    SECONDS is a positive decimal number, at most 30 days; anything else is a 400
    naming the header.
    """
    if raw is None:
        return None
    text = raw.strip()
    seconds = float(text) if _SECONDS.fullmatch(text) else 0.0
    if not 0 < seconds <= MAX_CANCEL_AFTER_SECONDS:
        raise InvalidInputError(
            f"Cancel-After: must be a positive number of seconds, at most "
            f"{MAX_CANCEL_AFTER_SECONDS}, got {raw[:40]!r}",
            field="Cancel-After",
            code="invalid_cancel_after",
            details={"max_seconds": MAX_CANCEL_AFTER_SECONDS},
        )
    return (now or utcnow()) + timedelta(seconds=seconds)
