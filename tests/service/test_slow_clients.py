"""Slow clients against the real API (``stylequeue api``), over loopback.

Fifty connections trickle a byte every few seconds, half of them in the request
head (``GET /healthz`` whose headers never end) and half in the body of a submit
(with a valid key, headers complete, 200 KB announced). Meanwhile another client
asks for ``/healthz`` on fresh connections and polls a job on a kept-alive one:
every answer comes, quickly. Then the limits: a body announced longer than the
app accepts is not read (the app's 413), a head still incomplete after the head
deadline is closed by the server, and a body that has not arrived by its
deadline gets a 408 and the connection is closed.

Everything here is bounded: each socket has a timeout, each loop a deadline.
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from api_process import ApiProcess
from PIL import Image
from processes import free_port

from api.asgi import body_deadline_seconds
from api.serving import HEAD_SECONDS
from shared.auth import create_client
from shared.db import Database

SLOW_HEADS = 25
SLOW_BODIES = 25
TRICKLE_SECONDS = 3.0  # one byte on each slow connection this often
MEASURE_SECONDS = 6.0  # within the head deadline: every slow connection stays open meanwhile
REQUEST_TIMEOUT = 5.0
P99_LIMIT_SECONDS = 0.25
ANNOUNCED_BODY_BYTES = 200_000
SLACK_SECONDS = 3.0


@dataclass
class Api:
    process: ApiProcess
    key: str
    job_id: str


def tiny_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (120, 30, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def api(postgresql_url: str, redis_url: str, redis_prefix: str, tmp_path: Path) -> Iterator[Api]:
    env = {
        "STYLEQUEUE_DATABASE_URL": postgresql_url,
        "STYLEQUEUE_REDIS_URL": redis_url,
        "STYLEQUEUE_REDIS_PREFIX": f"{redis_prefix}slow:",
        "STYLEQUEUE_DATA_DIR": str(tmp_path / "data"),
    }
    db = Database(postgresql_url)
    with db.session() as session:
        _, key = create_client(session, "slowclients")
    db.dispose()
    process = ApiProcess(env, free_port(), tmp_path / "api.log")
    try:
        process.start()
        process.wait_ready()
        image = tiny_png()
        submitted = httpx.post(
            f"{process.base_url}/v1/jobs",
            headers={"Authorization": f"Bearer {key}"},
            files={"content": ("c.png", image), "style": ("s.png", image)},
            data={"params": '{"size": 32, "iterations": 1, "scales": 1}'},
            timeout=REQUEST_TIMEOUT,
        )
        assert submitted.status_code == 202, submitted.text
        yield Api(process, key, submitted.json()["id"])
    finally:
        process.stop()


def slow_head(port: int) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT)
    conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    return conn


def slow_body(port: int, key: str) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT)
    conn.sendall(
        b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {key}\r\n".encode()
        + b"Content-Type: multipart/form-data; boundary=slowslowslow\r\n"
        + f"Content-Length: {ANNOUNCED_BODY_BYTES}\r\n\r\n".encode()
        + b'--slowslowslow\r\nContent-Disposition: form-data; name="content"; filename="c.png"\r\n'
    )
    return conn


def trickle(connections: list[socket.socket], stop: threading.Event) -> None:
    """A byte on every connection each TRICKLE_SECONDS until told to stop (bounded by the test)."""
    while not stop.wait(TRICKLE_SECONDS):
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.send(b"a")


def still_open(conn: socket.socket) -> bool:
    """Neither closed by the server nor answered: nothing to read yet."""
    conn.setblocking(False)
    try:
        conn.recv(1)  # an answer, or b"": closed
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        conn.setblocking(True)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@pytest.mark.slow
def test_the_api_keeps_answering_with_fifty_slow_connections_open(api: Api) -> None:
    port = api.process.port
    stop = threading.Event()
    with contextlib.ExitStack() as stack:
        slow = [stack.enter_context(slow_head(port)) for _ in range(SLOW_HEADS)]
        slow += [stack.enter_context(slow_body(port, api.key)) for _ in range(SLOW_BODIES)]
        trickler = threading.Thread(target=trickle, args=(slow, stop), daemon=True)
        trickler.start()
        latencies: list[float] = []
        failures: list[str] = []
        with (
            httpx.Client(
                base_url=api.process.base_url,
                headers={"Authorization": f"Bearer {api.key}"},
                timeout=REQUEST_TIMEOUT,
            ) as kept_alive,
            httpx.Client(  # "Connection: close": a new connection for each request
                base_url=api.process.base_url,
                headers={"Connection": "close"},
                timeout=REQUEST_TIMEOUT,
            ) as fresh,
        ):
            deadline = time.monotonic() + MEASURE_SECONDS
            while time.monotonic() < deadline:
                for name in ("healthz on a new connection", "poll on a kept-alive one"):
                    started = time.monotonic()
                    try:
                        if name.startswith("healthz"):
                            response = fresh.get("/healthz")
                        else:
                            response = kept_alive.get(f"/v1/jobs/{api.job_id}")
                    except httpx.TransportError as exc:
                        failures.append(f"{name}: {exc.__class__.__name__}")
                        continue
                    latencies.append(time.monotonic() - started)
                    if response.status_code != 200:
                        failures.append(f"{name}: {response.status_code}")
                time.sleep(0.02)
        open_at_end = sum(still_open(conn) for conn in slow)
        stop.set()
        trickler.join(timeout=TRICKLE_SECONDS + 1)
    p50, p99, slowest = (percentile(latencies, f) if latencies else 0.0 for f in (0.5, 0.99, 1))
    print(
        f"slow-clients: {len(latencies)} answers with {open_at_end} of {len(slow)} slow "
        f"connections open; p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
        f"max {slowest * 1000:.1f} ms; failures {len(failures)} {failures[:3]}"
    )
    assert not failures, failures[:10]
    assert open_at_end == len(slow)
    assert p99 < P99_LIMIT_SECONDS


def read_until_closed(conn: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection; and when that was."""
    received = b""
    conn.settimeout(timeout)
    with contextlib.suppress(OSError):
        while chunk := conn.recv(4096):
            received += chunk
    return received, time.monotonic()


@pytest.mark.slow
def test_a_head_or_a_body_past_its_deadline_is_cut_off(api: Api) -> None:
    port = api.process.port
    small_body = 1000
    body_deadline = body_deadline_seconds(small_body)
    with socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT) as huge:
        huge.sendall(
            b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {api.key}\r\n".encode()
            + b"Content-Type: multipart/form-data; boundary=b\r\n"
            + b"Content-Length: 1000000000000\r\n\r\n--b\r\n"
        )
        answer, _ = read_until_closed(huge, REQUEST_TIMEOUT)
    # Too long to be read at all: the app's 413 at once, and the connection closed.
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:300]
    assert b'"error":{"code":' in answer.replace(b" ", b""), answer[-300:]

    with contextlib.ExitStack() as stack:
        head = stack.enter_context(slow_head(port))
        body = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
        body.sendall(
            b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {api.key}\r\n".encode()
            + b"Content-Type: multipart/form-data; boundary=b\r\n"
            + f"Content-Length: {small_body}\r\n\r\n--b\r\n".encode()
        )
        opened = time.monotonic()
        stop = threading.Event()
        trickler = threading.Thread(target=trickle, args=([head, body], stop), daemon=True)
        trickler.start()
        results: dict[str, tuple[bytes, float]] = {}
        readers = [
            threading.Thread(
                target=lambda name, conn, limit: results.__setitem__(
                    name, read_until_closed(conn, limit + SLACK_SECONDS)
                ),
                args=(name, conn, limit),
            )
            for name, conn, limit in (("head", head, HEAD_SECONDS), ("body", body, body_deadline))
        ]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(timeout=max(HEAD_SECONDS, body_deadline) + 2 * SLACK_SECONDS)
        stop.set()
        trickler.join(timeout=TRICKLE_SECONDS + 1)
    head_bytes, head_closed = results["head"]
    body_bytes, body_closed = results["body"]
    print(
        f"slow-clients: head cut off after {head_closed - opened:.1f} s "
        f"(deadline {HEAD_SECONDS:g} s), body after {body_closed - opened:.1f} s "
        f"(deadline {body_deadline:.1f} s): {body_bytes[:12]!r}"
    )
    assert head_bytes == b"" and head_closed - opened < HEAD_SECONDS + SLACK_SECONDS
    assert head_closed - opened > HEAD_SECONDS - 1
    assert body_bytes.startswith(b"HTTP/1.1 408 "), body_bytes[:300]
    assert b'"code": "request_timeout"' in body_bytes
    assert body_deadline - 1 < body_closed - opened < body_deadline + SLACK_SECONDS
