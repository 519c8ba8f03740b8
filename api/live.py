"""A job's live events (``GET /v1/jobs/{id}/events``) and held answers (``Prefer: wait=N``),
served by the event loop in front of the Flask app's bridge (``api.asgi``).

A held stream or wait costs a connection, a few kilobytes and a timer, never one
of the bridge's threads: only its short reads of the row run on one (the first,
with the key's check, through the Flask app itself, so a stream answers exactly
the 401 or 404 ``GET /v1/jobs/{id}`` does). It learns of changes from the
process's one Redis subscription (``api.change_feed``), which also reads all the
watched jobs every few seconds in one query, so a lost hint only delays an event.

The stream's events are derived from the row, compared with what the stream sent
last (``api.sse_events``). Their ids are the server's clock in milliseconds,
strictly increasing along a stream; a stream resumed with ``Last-Event-ID`` first
sends the job's status only if it changed after that id, then carries on.

At most ``MAX_HELD`` streams and waits together per process (of the connections
``api.serving`` lets a process hold, so that ordinary requests always find room):
past it a stream is answered 503 ``server_busy`` with ``Retry-After``, and a wait
is answered at once, as if no wait had been asked (no ``Preference-Applied``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from api.asgi import Message, Receive, Scope, Send, WsgiBridge, _send_json
from api.auth import current_principal
from api.change_feed import ChangeFeed
from api.security_headers import outside_app_headers
from api.services import EXTENSION_KEY, Services
from api.sse_events import (
    FALLBACK_SECONDS,
    MAX_WAIT_SECONDS,
    PING_SECONDS,
    QUEUE_SECONDS,
    EventDiff,
    job_event_data,
    job_state,
    status_changed_at_ms,
)
from shared.errors import NotFoundError
from shared.job_changes import publish_changes_to
from shared.job_store import job_states, parse_job_id, poll_job
from shared.job_view import JobView
from shared.models import JobStatus
from shared.queue_position import QueueSnapshot

log = logging.getLogger(__name__)

MAX_HELD = 3000  # streams and waits per process, of api.serving's worker_connections
# The streams' reads of the row run on threads of their own, so that a burst of them (many
# streams opened at once, their timers due together) never queues ahead of the app's requests.
READ_THREADS = 2
_T = TypeVar("_T")
BUSY_RETRY_AFTER_SECONDS = 5

_JOB_PATH = re.compile(r"^/v1/jobs/([^/]+)$")
_EVENTS_PATH = re.compile(r"^/v1/jobs/([^/]+)/events$")
_FINISHED = {s.value for s in JobStatus if s.is_finished}


def parse_prefer_wait(values: list[str]) -> int | None:
    """The seconds a ``Prefer: wait=N`` asks for, cut to ``MAX_WAIT_SECONDS``; None when
    there is none, or it is malformed or not positive (a preference not understood is
    ignored, as RFC 7240 says). The first ``wait`` wins."""
    for value in values:
        for preference in value.split(","):
            name, has_value, raw = preference.split(";", 1)[0].strip().partition("=")
            if name.strip().lower() != "wait":
                continue
            text = raw.strip().strip('"')
            if not has_value or not text.isdigit() or int(text) <= 0:
                return None
            return min(int(text), MAX_WAIT_SECONDS)
    return None


def _header_values(scope: Scope, name: bytes) -> list[str]:
    return [v.decode("latin-1") for k, v in scope["headers"] if k == name]


def _get_scope(scope: Scope, path: str) -> Scope:
    """A bodiless GET of ``path`` with the request's own headers (its key), ``Prefer`` left out."""
    headers = [
        (k, v)
        for k, v in scope["headers"]
        if k not in (b"prefer", b"content-length", b"transfer-encoding", b"content-type")
    ]
    return {**scope, "method": "GET", "path": path, "raw_path": path.encode(), "headers": headers,
            "query_string": b""}  # fmt: skip


def _job_status(body: bytes) -> str | None:
    try:
        found = json.loads(body)
    except ValueError:
        return None
    return found.get("status") if isinstance(found, dict) else None


async def _send_whole(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class LiveRoutes:
    """The ASGI application served: the events path and ``Prefer: wait`` requests here, every
    other request (and the lifespan) straight to the bridge."""

    def __init__(self, bridge: WsgiBridge) -> None:
        self.bridge = bridge
        svc: Services = bridge.app.extensions[EXTENSION_KEY]
        self.services = svc
        self.feed = ChangeFeed(svc.settings, self._states)
        self.held = 0  # streams and waits now (the loop's thread only)
        self._reads: ThreadPoolExecutor | None = None
        publish_changes_to(svc.settings)  # a cancel by this API is heard by every API

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path, method = scope["path"], scope["method"]
            events = _EVENTS_PATH.match(path)
            if events is not None and method == "GET":
                await self._events(scope, receive, send, events.group(1))
                return
            wait = parse_prefer_wait(_header_values(scope, b"prefer"))
            if wait is not None and self.held < MAX_HELD:
                if method == "POST" and path == "/v1/jobs":
                    await self._held_submit(scope, receive, send, wait)
                    return
                if method == "GET" and _JOB_PATH.match(path):
                    await self._held_get(scope, send, wait)
                    return
        await self.bridge(scope, receive, send)

    def in_read_thread(self, function: Callable[[], _T]) -> asyncio.Future[_T]:
        """``function()`` on one of the streams' read threads."""
        if self._reads is None:
            self._reads = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="live")
        return asyncio.get_running_loop().run_in_executor(self._reads, function)

    # ------------------------------------------------------------ Prefer: wait

    async def _held_get(self, scope: Scope, send: Send, wait: int) -> None:
        status, headers, body = await self.bridge.call_app(scope)
        if status == 200:
            job_id = uuid.UUID(json.loads(body)["id"])
            status, headers, body = await self._hold(scope, job_id, wait, (status, headers, body))
        await _send_whole(send, status, headers, body)

    async def _held_submit(self, scope: Scope, receive: Receive, send: Send, wait: int) -> None:
        answered: list[Message] = []

        async def keep(message: Message) -> None:
            answered.append(message)

        await self.bridge(scope, receive, keep)
        if not answered:
            return  # the client went away
        start = answered[0]
        body = b"".join(m.get("body", b"") for m in answered[1:])
        if start["type"] != "http.response.start" or start["status"] not in (200, 202):
            for message in answered:
                await send(message)
            return
        job_id = uuid.UUID(json.loads(body)["id"])
        get = _get_scope(scope, f"/v1/jobs/{job_id}")
        status, headers, fresh = await self._hold(get, job_id, wait, (200, [], body))
        if status != 200:  # the job's read failed meanwhile: that answer, as a poll gets it
            await _send_whole(send, status, headers, fresh)
            return
        kept = [(k, v) for k, v in start["headers"] if k != b"content-length"]
        kept += [(b"content-length", str(len(fresh)).encode()), (b"preference-applied", f"wait={wait}".encode())]  # fmt: skip
        await _send_whole(send, start["status"], kept, fresh)

    async def _hold(
        self,
        get: Scope,
        job_id: uuid.UUID,
        wait: int,
        answer: tuple[int, list[tuple[bytes, bytes]], bytes],
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """The job's answer once it has finished or ``wait`` seconds passed (re-read through the
        app's own GET at each hint), with ``Preference-Applied``; a failed read's own answer."""
        deadline = time.monotonic() + wait
        status, headers, body = answer
        event = self.feed.watch(job_id, None)  # any state: the sweep wakes it too
        self.held += 1
        try:
            while _job_status(body) not in _FINISHED:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(remaining, FALLBACK_SECONDS)):
                        await event.wait()
                event.clear()
                status, headers, body = await self.bridge.call_app(get)
                if status != 200:
                    return status, headers, body
        finally:
            self.held -= 1
            self.feed.unwatch(job_id, event)
        return status, [*headers, (b"preference-applied", f"wait={wait}".encode())], body

    # ------------------------------------------------------------ the event stream

    def _open(self, scope: Scope, raw_id: str) -> tuple[int, JobView] | None:
        """In a thread: the caller's client id and the job, or None (the GET answers why)."""
        environ = self.bridge.environ(_get_scope(scope, f"/v1/jobs/{raw_id}"))
        with self.bridge.app.request_context(environ):
            try:
                client_id = current_principal().client_id
                job = poll_job(self.services.db, parse_job_id(raw_id), client_id=client_id)
            except Exception:  # a 4xx, or the database away: the app's own answer says which
                return None
        return client_id, job

    async def _events(self, scope: Scope, receive: Receive, send: Send, raw_id: str) -> None:
        opened = await self.in_read_thread(lambda: self._open(scope, raw_id))
        if opened is None:
            answer = await self.bridge.call_app(_get_scope(scope, f"/v1/jobs/{raw_id}"))
            await _send_whole(send, *answer)
            return
        if self.held >= MAX_HELD:
            await _send_json(
                send,
                503,
                "server_busy",
                "this server holds as many event streams as it can; try again in a few seconds",
                {"held": self.held},
                retry_after=BUSY_RETRY_AFTER_SECONDS,
            )
            return
        client_id, job = opened
        self.held += 1
        try:
            await _Stream(self, send, receive, client_id, job, _last_event_id(scope)).run()
        finally:
            self.held -= 1

    async def _states(self, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, Hashable]:
        """The watched jobs' states now, in one query (the feed's sweep)."""
        db = self.services.db
        found = await self.in_read_thread(lambda: job_states(db, job_ids))
        states: dict[uuid.UUID, Hashable] = dict(found)
        return states

    async def read(self, job_id: uuid.UUID, client_id: int) -> JobView:
        db = self.services.db
        return await self.in_read_thread(lambda: poll_job(db, job_id, client_id=client_id))

    async def queue(self, job: JobView) -> QueueSnapshot | None:
        """The process's snapshot of the fair order (``shared.queue_position``), one that
        knows queued ``job``; None when it cannot be read now (the database away: the next
        look may work)."""
        svc = self.services

        def read() -> QueueSnapshot:
            with svc.db.session() as session:
                return svc.queue.get(
                    session,
                    queue_name=svc.settings.redis_prefix,
                    max_attempts=svc.settings.max_attempts,
                    newest=job.created_at,
                )

        try:
            return await self.in_read_thread(read)
        except Exception as exc:
            log.warning("could not read the queue's order for the event streams (%s)", exc)
            return None


def _last_event_id(scope: Scope) -> int | None:
    for value in _header_values(scope, b"last-event-id"):
        if value.strip().isdigit():
            return int(value.strip())
    return None


class _Stream:
    """One open ``text/event-stream`` of one job."""

    def __init__(
        self,
        routes: LiveRoutes,
        send: Send,
        receive: Receive,
        client_id: int,
        job: JobView,
        last_id: int | None,
    ) -> None:
        self.routes, self.send, self.receive = routes, send, receive
        self.client_id, self.job = client_id, job
        self.resumed_after = last_id
        self.last_id = last_id or 0
        self.diff = EventDiff(job)

    async def _write(self, text: str) -> None:
        await self.send({"type": "http.response.body", "body": text.encode(), "more_body": True})

    async def _emit(self, name: str, data: dict[str, Any]) -> None:
        self.last_id = max(self.last_id + 1, int(time.time() * 1000))
        payload = json.dumps(data, separators=(",", ":"), allow_nan=False)
        await self._write(f"id: {self.last_id}\nevent: {name}\ndata: {payload}\n\n")

    async def run(self) -> None:
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"),
            *outside_app_headers(),
        ]
        await self.send({"type": "http.response.start", "status": 200, "headers": headers})
        gone = asyncio.ensure_future(self._until_disconnect())
        try:
            await self._events(gone)
        except OSError:
            pass  # the client went away mid-write
        finally:
            gone.cancel()
        with contextlib.suppress(OSError):
            await self.send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _until_disconnect(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass

    async def _events(self, gone: asyncio.Future[Any]) -> None:
        job = self.job
        if job.status.is_finished:
            await self._emit("done", job_event_data(job))
            return
        after = self.resumed_after
        routes = self.routes
        queue = await routes.queue(job) if job.status is JobStatus.QUEUED else None
        if after is None or status_changed_at_ms(job) > after:
            data = job_event_data(job, queue)
            self.diff.sent_queue(data["queue"])
            await self._emit("status", data)
        elif queue is not None:  # resumed: the place may have moved meanwhile
            for name, found in self.diff.queue_event(job, queue):
                await self._emit(name, found)
        event = routes.feed.watch(job.id, job_state(job))
        next_ping = time.monotonic() + PING_SECONDS
        next_queue = time.monotonic() + QUEUE_SECONDS
        try:
            while not gone.done():
                now = time.monotonic()
                due = min(next_ping, self.diff.progress_due_at or next_ping)
                if job.status is JobStatus.QUEUED:
                    due = min(due, next_queue)
                woken: asyncio.Future[Any] = asyncio.ensure_future(event.wait())
                await asyncio.wait(
                    (woken, gone), timeout=max(0.0, due - now), return_when=asyncio.FIRST_COMPLETED
                )
                woken.cancel()
                if gone.done():
                    return
                now = time.monotonic()
                if now >= next_ping:
                    await self._write(": ping\n\n")
                    next_ping = now + PING_SECONDS
                event_read = event.is_set()
                if event_read:
                    event.clear()
                    try:
                        job = await routes.read(job.id, self.client_id)
                    except NotFoundError:
                        return  # deleted meanwhile: nothing more will happen to it
                    except Exception as exc:  # the database away: the next read may work
                        log.warning("job %s: could not read it for its event stream (%s)", job.id, exc)  # fmt: skip
                        continue  # the sweep wakes it again if the job has changed
                    routes.feed.saw(job.id, job_state(job))
                queue = None
                if job.status is JobStatus.QUEUED and (event_read or now >= next_queue):
                    queue = await routes.queue(job)
                    next_queue = time.monotonic() + QUEUE_SECONDS
                for name, data in self.diff.events(job, now, queue):
                    await self._emit(name, data)
                    if name == "done":
                        return
                if queue is not None and job.status is JobStatus.QUEUED:
                    for name, data in self.diff.queue_event(job, queue):
                        await self._emit(name, data)
        finally:
            routes.feed.unwatch(job.id, event)
