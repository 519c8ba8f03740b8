"""A small HTTP/1.1 load generator for loopback benchmarks (used by service_http.py).

Why not httpx: at a few thousand requests a second on a 2-core machine the
generator must cost little next to the server it measures. This one writes
pre-built request bytes on keep-alive connections and parses only the status
line and Content-Length. Every run is bounded by a request count and a time.

Two modes:
- closed loop (``rate=None``): each connection sends its next request when the
  last one returns; gives the most the server sustains at that concurrency.
- open loop (``rate=R``): request i is due at ``start + i / R`` whatever came
  before; latency counts from that due time, so a stalled server shows up in
  the tail instead of being hidden (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

RequestBuilder = Callable[[int], bytes]
MAX_HEADER_BYTES = 64 * 1024


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q <= 100) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class LoadResult:
    """What one load run saw."""

    latencies_s: list[float] = field(default_factory=list)  # responses with the expected status
    statuses: Counter[int] = field(default_factory=Counter)
    connection_errors: int = 0
    elapsed_s: float = 0.0
    bodies: list[bytes] = field(default_factory=list)  # the first ``keep_bodies`` good ones

    @property
    def ok(self) -> int:
        return len(self.latencies_s)

    @property
    def per_second(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def ms(self, q: float) -> float:
        return percentile(self.latencies_s, q) * 1000.0

    def summary(self) -> str:
        bad = sum(n for status, n in self.statuses.items() if status >= 400)
        return (
            f"{self.ok} ok in {self.elapsed_s:.2f} s = {self.per_second:,.0f}/s; "
            f"p50 {self.ms(50):.1f} ms, p99 {self.ms(99):.1f} ms, max {self.ms(100):.1f} ms; "
            f"statuses {dict(sorted(self.statuses.items()))}, "
            f"errors {bad} http + {self.connection_errors} connection"
        )


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """One response: (status, body, server will close)."""
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > MAX_HEADER_BYTES:
        raise ConnectionError("response header too large")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = await _read_chunked(reader)
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    closing = headers.get("connection", "").lower() == "close" or lines[0].startswith("HTTP/1.0")
    return status, body, closing


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


async def run_load(
    host: str,
    port: int,
    build_request: RequestBuilder,
    *,
    total: int,
    concurrency: int,
    time_limit_s: float,
    rate: float | None = None,
    expect_status: int = 200,
    keep_bodies: int = 0,
) -> LoadResult:
    """Send up to ``total`` requests over ``concurrency`` connections, for at most ``time_limit_s``."""
    result = LoadResult()
    indices = itertools.count()
    start = time.perf_counter()
    deadline = start + time_limit_s

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while True:
                i = next(indices)
                now = time.perf_counter()
                if i >= total or now >= deadline:
                    return
                due = now
                if rate is not None:
                    due = start + i / rate
                    if due >= deadline:
                        return
                    if due > now:
                        await asyncio.sleep(due - now)
                writer.write(build_request(i))
                try:
                    await writer.drain()
                    status, body, closing = await _read_response(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    result.connection_errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                    continue
                result.statuses[status] += 1
                if status == expect_status:
                    result.latencies_s.append(time.perf_counter() - due)
                    if len(result.bodies) < keep_bodies:
                        result.bodies.append(body)
                if closing:
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    result.elapsed_s = time.perf_counter() - start
    return result


def http_request(
    method: str, path: str, *, host: str, headers: dict[str, str], body: bytes = b""
) -> bytes:
    """The bytes of one HTTP/1.1 keep-alive request."""
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: keep-alive"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    if body or method in ("POST", "PUT", "PATCH"):
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def multipart_body(
    fields: Sequence[tuple[str, str | None, bytes]], boundary: str
) -> tuple[bytes, str]:
    """A multipart/form-data body from (name, filename or None, data); returns (body, content type)."""
    parts: list[bytes] = []
    for name, filename, data in fields:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        kind = "application/octet-stream" if filename is not None else "text/plain; charset=utf-8"
        parts.append(
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {kind}\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"
