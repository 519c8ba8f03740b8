"""One Redis subscription per API process, fanned out in memory to the streams and
waits of the jobs that changed (``api.live``).

The workers, and the API for a cancel, publish a hint on the job's channel after
each change of its row (``shared.job_changes``). Here the event loop listens to all
of them with one PSUBSCRIBE on one connection, and wakes the ``asyncio.Event`` of
every stream or wait watching that job: they re-read the row. However many streams
are open, the process holds one Redis connection.

A hint can be lost (Redis restarting, a network blip): the connection is made again
with a backoff, every watcher re-reads once it is back (its job may have changed
meanwhile), and each watcher also re-reads on its own timer (``FALLBACK_SECONDS`` in
``api.live``). So a lost hint delays an event by a few seconds at most; nothing a
client sees depends on one.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from shared.job_changes import channel_pattern, job_of_channel
from shared.redis_conn import async_redis_client
from shared.settings import Settings

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 2.0
HEALTH_CHECK_SECONDS = 10.0  # an idle subscription is PINGed this often
RECONNECT_MIN_SECONDS = 0.5
RECONNECT_MAX_SECONDS = 5.0


class ChangeFeed:
    """The process's subscription to every job's change hints, and who watches which job.

    Used from the event loop's thread only; the listening task starts with the first watch.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._watchers: dict[uuid.UUID, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self.connected = False

    def watch(self, job_id: uuid.UUID) -> asyncio.Event:
        """An event set whenever job ``job_id`` may have changed; ``unwatch`` it when done."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._listen())
        event = asyncio.Event()
        self._watchers.setdefault(job_id, set()).add(event)
        return event

    def unwatch(self, job_id: uuid.UUID, event: asyncio.Event) -> None:
        watchers = self._watchers.get(job_id)
        if watchers is not None:
            watchers.discard(event)
            if not watchers:
                del self._watchers[job_id]

    @property
    def watched_jobs(self) -> int:
        return len(self._watchers)

    def _wake(self, job_id: uuid.UUID) -> None:
        for event in self._watchers.get(job_id, ()):
            event.set()

    def _wake_all(self) -> None:
        for watchers in self._watchers.values():
            for event in watchers:
                event.set()

    async def _listen(self) -> None:
        prefix = self._settings.redis_prefix
        backoff = RECONNECT_MIN_SECONDS
        while True:
            client = async_redis_client(self._settings, connect_timeout=CONNECT_TIMEOUT_SECONDS)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(channel_pattern(prefix))
                if not self.connected:
                    log.info("listening for job changes on Redis")
                self.connected = True
                backoff = RECONNECT_MIN_SECONDS
                self._wake_all()  # what changed while nobody listened is read now
                while True:
                    message = await pubsub.get_message(timeout=HEALTH_CHECK_SECONDS)
                    if message is None:
                        await pubsub.ping()
                        continue
                    if message.get("type") != "pmessage":
                        continue
                    name = message["channel"]
                    job_id = job_of_channel(
                        prefix, name.decode() if isinstance(name, bytes) else str(name)
                    )
                    if job_id is not None:
                        self._wake(job_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: the watchers' own timers carry on
                if self.connected:
                    log.warning(
                        "lost the Redis subscription to job changes (%s); reconnecting", exc
                    )
                self.connected = False
            finally:
                try:
                    # redis-py's own methods; its stubs here predate them
                    await pubsub.aclose()  # type: ignore[attr-defined]
                    await client.aclose()  # type: ignore[attr-defined]
                except Exception:  # closing a broken connection: nothing more to do
                    log.debug("closing the broken subscription failed", exc_info=True)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RECONNECT_MAX_SECONDS)
