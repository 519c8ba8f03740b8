"""One Redis subscription per API process, fanned out in memory to the streams and
waits of the jobs that changed (``api.live``).

The workers, and the API for a cancel, publish a hint on the job's channel after
each change of its row (``shared.job_changes``). Here the event loop listens to all
of them with one PSUBSCRIBE on one connection, and wakes the ``asyncio.Event`` of
every stream or wait watching that job: they re-read the row. However many streams
are open, the process holds one Redis connection.

A hint can be lost (Redis restarting, a network blip, a worker that could not
publish): the connection is made again with a backoff, and every watcher re-reads
once it is back (its job may have changed meanwhile). Besides, every
``FALLBACK_SECONDS`` the feed reads all the watched jobs in one query and wakes the
watchers of each job that differs from what they last read (``saw``). So a lost hint
delays an event by a few seconds at most, and a thousand idle streams cost one query
each time, not a thousand.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Hashable

from shared.job_changes import channel_pattern, job_of_channel
from shared.redis_conn import async_redis_client
from shared.settings import Settings

# The watched jobs' states now (a job's id to what ``saw`` is given), for the sweep.
Sweep = Callable[[list[uuid.UUID]], Awaitable[dict[uuid.UUID, Hashable]]]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 2.0
HEALTH_CHECK_SECONDS = 10.0  # an idle subscription is PINGed this often
RECONNECT_MIN_SECONDS = 0.5
RECONNECT_MAX_SECONDS = 5.0
FALLBACK_SECONDS = 5.0  # every watched job is read this often, hint or not
SWEEP_BATCH = 500  # jobs per query of the sweep


class ChangeFeed:
    """The process's subscription to every job's change hints, and who watches which job.

    Used from the event loop's thread only; the listening task starts with the first watch.
    """

    def __init__(self, settings: Settings, sweep: Sweep) -> None:
        self._settings = settings
        self._sweep = sweep
        self._watchers: dict[uuid.UUID, set[asyncio.Event]] = {}
        self._seen: dict[uuid.UUID, Hashable] = {}  # what the watchers of a job read last
        self._task: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.connected = False

    def watch(self, job_id: uuid.UUID, seen: Hashable) -> asyncio.Event:
        """An event set whenever job ``job_id`` may have changed; ``unwatch`` it when done.
        ``seen``: the state the watcher read (as the sweep gives it); ``saw`` each later one."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._listen())
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = loop.create_task(self._sweep_now_and_then())
        self._seen[job_id] = seen
        event = asyncio.Event()
        self._watchers.setdefault(job_id, set()).add(event)
        return event

    def unwatch(self, job_id: uuid.UUID, event: asyncio.Event) -> None:
        watchers = self._watchers.get(job_id)
        if watchers is not None:
            watchers.discard(event)
            if not watchers:
                del self._watchers[job_id]
                self._seen.pop(job_id, None)

    def saw(self, job_id: uuid.UUID, state: Hashable) -> None:
        """A watcher of ``job_id`` read it in ``state``."""
        if job_id in self._watchers:
            self._seen[job_id] = state

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

    async def _sweep_now_and_then(self) -> None:
        while self._watchers:
            await asyncio.sleep(FALLBACK_SECONDS)
            ids = list(self._watchers)
            for first in range(0, len(ids), SWEEP_BATCH):
                try:
                    states = await self._sweep(ids[first : first + SWEEP_BATCH])
                except Exception as exc:  # the database away: the next sweep may work
                    log.warning("could not read the watched jobs (%s)", exc)
                    break
                for job_id in ids[first : first + SWEEP_BATCH]:
                    state = states.get(job_id)  # None: gone, its watchers find out
                    if job_id in self._seen and self._seen[job_id] != state:
                        self._wake(job_id)

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
