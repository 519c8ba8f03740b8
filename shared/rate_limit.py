"""A submit rate per client, shared by every API process: GCRA in one Redis Lua script.

The generic cell rate algorithm is a token bucket kept as one number per
client, its "theoretical arrival time" (TAT): a client may submit ``burst``
jobs at once, then one every ``1 / rate`` seconds. The script reads and moves
the TAT atomically on Redis's own clock (``TIME``), so API processes on
several machines share one bucket per client and no clock of theirs matters.
The key expires once the bucket is full again: an idle client costs nothing.

The ``limits`` package was considered: it keeps fixed, moving and sliding
windows, which allow twice the quota across a window's edge or keep one entry
per request; none is a token bucket with a burst apart from its rate, and
none says when the next request would pass, which ``Retry-After`` needs.

Only this module knows that the bucket lives in Redis; ``shared.client_limits``
decides what to do with the answer (and with a Redis that does not answer).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

# KEYS[1]: the client's TAT. ARGV[1]: seconds per submit (1 / rate); ARGV[2]: the burst.
# Returns {allowed (1 or 0), submits left now, seconds until the bucket is full again,
# seconds until the next submit is allowed (0 when allowed)}; numbers as text (Redis
# truncates Lua numbers to integers).
_GCRA = """
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local tolerance = interval * burst
local new_tat = tat + interval
local allow_at = new_tat - tolerance
if allow_at > now + 1e-9 then
  return {0, 0, tostring(tat - now), tostring(allow_at - now)}
end
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 1000)
local left = math.floor((now - (new_tat - tolerance)) / interval + 1e-6)
return {1, left, tostring(new_tat - now), '0'}
"""


@dataclass(frozen=True)
class RateDecision:
    """What the bucket said about one submit."""

    allowed: bool
    remaining: int  # submits allowed right now, after this one
    reset_seconds: float  # until the bucket is full again (``burst`` submits at once)
    retry_after_seconds: float  # until the next submit is allowed; 0 when this one was


class RateBucket:
    """The submit buckets of every client, under ``prefix`` in one Redis."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._prefix = prefix
        self._script = client.register_script(_GCRA)

    def take(self, client_id: int, *, rate: float, burst: int) -> RateDecision:
        """Take one submit from ``client_id``'s bucket (``rate`` > 0 a second, ``burst`` > 0).

        Raises ``redis.RedisError`` when Redis does not answer.
        """
        allowed, remaining, reset, retry = self._script(
            keys=[f"{self._prefix}ratelimit:{client_id}"], args=[1.0 / rate, burst]
        )
        return RateDecision(
            allowed=bool(int(allowed)),
            remaining=max(0, int(remaining)),
            reset_seconds=max(0.0, float(reset)),
            retry_after_seconds=max(0.0, float(retry)),
        )
