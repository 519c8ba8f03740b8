"""A hint, on Redis pub/sub, that a job's row changed in a way its client sees.

Every change of a job's row goes through ``shared.job_store.guarded_update``;
after its commit it calls ``job_changed(job_id)``, which publishes an empty
message on the job's own channel, ``<prefix>job-changed:<id>``, for the API's
event streams and ``Prefer: wait`` answers to re-read the row (``api/live.py``).

The message is only a hint: the database stays the truth, and a listener also
re-reads on a timer, so a lost message costs a delay, never a wrong answer.
Publishing must never fail or slow down a job: one quick try, an error logged
(at most once a minute per process) and forgotten. A process that never called
``publish_changes_to`` (a test, the CLI) publishes nothing.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from typing import TYPE_CHECKING

from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.redis_conn import redis_client

if TYPE_CHECKING:
    import redis

    from shared.settings import Settings

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "job-changed:"  # under the app's Redis key prefix; the job's id follows
PUBLISH_TIMEOUT_SECONDS = 0.5  # a Redis that does not answer costs a write at most this
ERROR_LOG_INTERVAL_SECONDS = 60.0


def channel(prefix: str, job_id: uuid.UUID | str) -> str:
    """The job's channel."""
    return f"{prefix}{CHANNEL_PREFIX}{job_id}"


def channel_pattern(prefix: str) -> str:
    """Every job's channel, for one PSUBSCRIBE per listening process."""
    return f"{prefix}{CHANNEL_PREFIX}*"


def job_of_channel(prefix: str, name: str) -> uuid.UUID | None:
    """The job a channel is of; None for another channel or a malformed one."""
    head = prefix + CHANNEL_PREFIX
    if not name.startswith(head):
        return None
    try:
        return uuid.UUID(name[len(head) :])
    except ValueError:
        return None


class ChangePublisher:
    """Publishes the hints of one process; its Redis client is made in the process that
    publishes (a forked worker child makes its own)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: redis.Redis | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._last_error_log = 0.0

    def _redis(self) -> redis.Redis:
        with self._lock:
            if self._client is None or self._pid != os.getpid():
                self._client = redis_client(
                    self._settings, timeout=PUBLISH_TIMEOUT_SECONDS, retry=Retry(NoBackoff(), 0)
                )
                self._pid = os.getpid()
            return self._client

    def publish(self, job_id: uuid.UUID) -> None:
        """Publish the hint; any error is logged now and then and otherwise ignored."""
        try:
            self._redis().publish(channel(self._settings.redis_prefix, job_id), b"")
        except Exception as exc:  # never a job's failure: the listeners re-read anyway
            now = time.monotonic()
            if now - self._last_error_log >= ERROR_LOG_INTERVAL_SECONDS:
                self._last_error_log = now
                log.warning("job %s: could not publish its change on Redis (%s)", job_id, exc)


_publisher: ChangePublisher | None = None


def publish_changes_to(settings: Settings | None) -> None:
    """From now on this process publishes its jobs' changes on ``settings``' Redis
    (None: no longer)."""
    global _publisher
    _publisher = None if settings is None else ChangePublisher(settings)


def job_changed(job_id: uuid.UUID) -> None:
    """Job ``job_id``'s row changed (committed): tell the listeners, if this process publishes."""
    publisher = _publisher
    if publisher is not None:
        publisher.publish(job_id)
