"""A job's live events (``GET /v1/jobs/{id}/events``, server-sent events) for the client.

``read_events`` parses the ``text/event-stream`` lines; ``follow_events`` keeps a
stream open across dropped connections, sending ``Last-Event-ID`` when it comes
back, until the ``done`` event. ``StylequeueClient.events`` and ``wait`` use them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from client.errors import ServerError, TransportError

EVENTS_READ_TIMEOUT_S = 45.0  # the server writes at least a comment every 15 s
MAX_RECONNECTS = 5  # dropped connections in a row before giving up
RECONNECT_DELAY_S = 1.0


@dataclass(frozen=True)
class JobEvent:
    """One event of a job's stream: ``name`` is ``status``, ``progress``, ``preview`` or
    ``done``; ``data`` its decoded JSON (a job's JSON for ``status`` and ``done``);
    ``id`` what a resumed stream starts after."""

    name: str
    data: Any
    id: str | None = None


def read_events(lines: Iterable[str]) -> Iterator[JobEvent]:
    """The events in the lines of a ``text/event-stream`` (comments and retry lines left out)."""
    name, event_id = "message", None
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield JobEvent(name, json.loads("\n".join(data)), event_id)
            name, data = "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            event_id = value


def follow_events(
    http: httpx.Client,
    path: str,
    check: Callable[[httpx.Response], None],
    *,
    last_event_id: str | None = None,
    read_timeout_s: float = EVENTS_READ_TIMEOUT_S,
    max_reconnects: int = MAX_RECONNECTS,
    deadline: float | None = None,
) -> Iterator[JobEvent]:
    """The events of ``path`` until ``done``; a dropped connection (or a 5xx) is opened again
    after ``RECONNECT_DELAY_S``, resuming after the last event seen, up to
    ``max_reconnects`` times in a row. ``check`` raises the client's error for an answer
    that is not a stream (a 404: no such job, or a server without event streams).
    ``deadline`` (a ``time.monotonic()`` value): the events stop there, ``done`` or not."""
    failures = 0
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        read = read_timeout_s if left is None else min(read_timeout_s, left)
        timeout = httpx.Timeout(http.timeout.connect, read=read)
        try:
            with http.stream("GET", path, headers=headers, timeout=timeout) as response:
                if response.is_error:
                    response.read()
                    check(response)
                for event in read_events(response.iter_lines()):
                    failures = 0
                    if event.id is not None:
                        last_event_id = event.id
                    yield event
                    if event.name == "done":
                        return
        except (httpx.TransportError, ServerError) as exc:
            if deadline is not None and time.monotonic() >= deadline:
                return  # the wait is over, not the connection's fault
            failures += 1
            if failures > max_reconnects:
                if isinstance(exc, ServerError):
                    raise
                raise TransportError(f"GET {http.base_url}{path}: {exc}") from exc
        else:
            failures += 1  # the stream ended before done (the server restarting)
            if failures > max_reconnects:
                raise TransportError(f"GET {http.base_url}{path}: the stream ended before done")
        time.sleep(RECONNECT_DELAY_S)
