"""The API as an ASGI application: the Flask app behind a bridge that reads each whole request first.

``stylequeue api`` serves this with gunicorn's asyncio worker (``api.serving``).
The event loop reads a request's head and its whole body, however slowly the
client sends them, at the cost of a few kilobytes each; only then does one of
the process's few threads run the Flask app on it, with the body in memory.
So a client that trickles its headers or its upload holds no thread, and a
handful of them cannot starve everyone else as they could when each connection
took a thread from its first byte.

Limits on a request body (the head is bounded in ``api.serving``):

- more than the app's ``MAX_CONTENT_LENGTH`` is not read: the app answers its
  413 from the announced length (or from the bytes read so far, chunked);
- the body must arrive within ``BODY_GRACE_SECONDS`` plus one second per
  ``MIN_BODY_BYTES_PER_SECOND`` of it, else a 408 ``request_timeout`` and the
  connection is closed;
- the bodies a process holds at once (announced, or read so far) stay within
  ``BODY_BUDGET_BYTES`` (at least one request at the app's limit): a request
  that would go past it is answered 503 ``server_busy`` with ``Retry-After``
  and not read, so many clients uploading at once cannot exhaust the memory.
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from flask import Flask

from api.security_headers import outside_app_headers

if TYPE_CHECKING:
    from api.live import LiveRoutes

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DEFAULT_THREADS = 4  # per process: a submit spends much of its time waiting on fsync
BODY_GRACE_SECONDS = 10.0
MIN_BODY_BYTES_PER_SECOND = 16 * 1024  # 128 kbit/s: slower uploads time out
RESPONSE_CHUNK_BYTES = 256 * 1024  # a file is sent in pieces of about this size
BODY_BUDGET_BYTES = 512 * 1024 * 1024  # request bodies one process holds at once
BUSY_RETRY_AFTER_SECONDS = 5


def body_deadline_seconds(length: int) -> float:
    """How long a body of ``length`` bytes may take to arrive."""
    return BODY_GRACE_SECONDS + length / MIN_BODY_BYTES_PER_SECOND


class _Response:
    """What the WSGI app answered: status, headers, and its body in chunks."""

    def __init__(self) -> None:
        self.status = 500
        self.headers: list[tuple[bytes, bytes]] = []
        self.written: list[bytes] = []

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None and self.headers:
            raise exc_info[1].with_traceback(exc_info[2])
        self.status = int(status.split(" ", 1)[0])
        self.headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        return self.written.append


class WsgiBridge:
    """An ASGI application that runs a WSGI application in a thread pool, request by request.

    Nothing of a request reaches a thread before its body is complete, and a
    response body is produced in the thread in pieces of ``RESPONSE_CHUNK_BYTES``
    that the event loop sends.
    """

    def __init__(
        self,
        app: Flask,
        *,
        threads: int = DEFAULT_THREADS,
        body_budget_bytes: int = BODY_BUDGET_BYTES,
    ) -> None:
        self.app = app
        self.threads = threads  # the worker may set it (gunicorn's --threads) before a request
        self.body_budget_bytes = body_budget_bytes
        self.buffered_bytes = 0  # of the bodies being read or served now (the loop's thread only)
        self._pool: ThreadPoolExecutor | None = None

    @property
    def max_body_bytes(self) -> int | None:
        limit = self.app.config.get("MAX_CONTENT_LENGTH")
        return int(limit) if limit is not None else None

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="wsgi")
        return self._pool

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)
        # Anything else (a WebSocket) is not served: returning closes it.

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._pool is not None:
                    self._pool.shutdown(wait=False)
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _budget(self) -> int:
        # One request at the app's own limit always fits on an idle process.
        return max(self.body_budget_bytes, self.max_body_bytes or 0)

    def _reserve(self, size: int) -> bool:
        """Count ``size`` more bytes of body against the budget; False (nothing counted) if over."""
        if size and self.buffered_bytes + size > self._budget():
            return False
        self.buffered_bytes += size
        return True

    async def _busy(self, send: Send, wanted: int) -> None:
        await _send_json(
            send,
            503,
            "server_busy",
            "the server is holding as many uploads as it can; try again in a few seconds",
            {"body_bytes": wanted},
            retry_after=BUSY_RETRY_AFTER_SECONDS,
        )

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        reserved = [0]  # bytes of this request's body counted in buffered_bytes
        try:
            await self._serve(scope, receive, send, reserved)
        finally:
            self.buffered_bytes -= reserved[0]

    async def _serve(self, scope: Scope, receive: Receive, send: Send, reserved: list[int]) -> None:
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        length: int | None = None
        has_body = False
        for name, value in headers:
            if name == b"content-length":
                has_body = True
                try:
                    length = int(value)
                except ValueError:
                    length = None
            elif name == b"transfer-encoding":
                has_body = True
        body = b""
        too_large_at: int | None = None
        limit = self.max_body_bytes
        if has_body:
            if limit is not None and length is not None and length > limit:
                too_large_at = length  # not read: the app answers 413 from the length
            else:
                if not self._reserve(length or 0):
                    await self._busy(send, length or 0)
                    return
                reserved[0] = length or 0
                read = await self._read_body(receive, send, length or 0, limit, reserved)
                if read is None:
                    return  # the client went away, or was answered 408
                body, too_large_at = read
        environ = self._environ(scope, body, too_large_at)
        loop = asyncio.get_running_loop()
        pool = self._executor()
        response, chunk, rest = await loop.run_in_executor(pool, self._run, environ)
        await send(
            {"type": "http.response.start", "status": response.status, "headers": response.headers}
        )
        try:
            while rest is not None:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                chunk, rest = await loop.run_in_executor(pool, self._more, rest)
            await send({"type": "http.response.body", "body": chunk, "more_body": False})
        finally:
            if rest is not None:  # the client went away mid-body: release the file
                rest.close()

    async def _read_body(
        self, receive: Receive, send: Send, length: int, limit: int | None, reserved: list[int]
    ) -> tuple[bytes, int | None] | None:
        """The whole body, read by the event loop within its deadline; None if answered."""
        chunks: list[bytes] = []
        size = 0
        deadline = body_deadline_seconds(length if limit is None else min(length, limit))
        try:
            async with asyncio.timeout(deadline):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if limit is not None and size > limit:
                        return b"", size  # chunked and too long: stop reading, the app says 413
                    if size > reserved[0]:  # chunked, or more than announced: count it too
                        if not self._reserve(size - reserved[0]):
                            await self._busy(send, size)
                            return None
                        reserved[0] = size
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(chunks), None
        except TimeoutError:
            await _send_json(
                send,
                408,
                "request_timeout",
                f"the request body did not arrive within {deadline:.0f} s",
                {"received_bytes": size, "expected_bytes": length or None},
            )
            return None

    @staticmethod
    def _environ(scope: Scope, body: bytes, too_large_at: int | None) -> dict[str, Any]:
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        path = unquote_to_bytes(raw_path.split(b"?", 1)[0]).decode("latin-1")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        server = scope.get("server") or ("localhost", 80)
        client = scope.get("client")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": scope["method"],
            "SCRIPT_NAME": root,
            "PATH_INFO": path,
            "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
            "SERVER_NAME": str(server[0]),
            "SERVER_PORT": str(server[1]) if server[1] is not None else "80",
            "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": scope.get("scheme", "http"),
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
        if client:
            environ["REMOTE_ADDR"] = str(client[0])
            environ["REMOTE_PORT"] = str(client[1])
        for name, value in scope["headers"]:
            key = name.decode("latin-1").upper().replace("-", "_")
            text = value.decode("latin-1")
            if key == "CONTENT_TYPE":
                environ["CONTENT_TYPE"] = text
                continue
            if key in ("CONTENT_LENGTH", "TRANSFER_ENCODING"):
                continue  # the body is whole now: its length is set below
            key = "HTTP_" + key
            if key in environ:
                text = environ[key] + ("; " if key == "HTTP_COOKIE" else ",") + text
            environ[key] = text
        environ["CONTENT_LENGTH"] = str(too_large_at if too_large_at is not None else len(body))
        return environ

    def _run(self, environ: dict[str, Any]) -> tuple[_Response, bytes, _Closing | None]:
        """In a thread: call the app and take its first piece of body."""
        response = _Response()
        try:
            iterable = self.app(environ, response.start_response)
        except Exception:  # the app failed outside Flask's own handlers
            self.app.logger.exception("the WSGI app raised")
            return _error_response(), b"", None
        chunk, rest = self._take(iter(iterable), iterable)
        return response, b"".join(response.written) + chunk, rest

    def environ(self, scope: Scope) -> dict[str, Any]:
        """The WSGI environ of the bodiless request ``scope`` describes."""
        return self._environ(scope, b"", None)

    async def call_app(self, scope: Scope) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """The app's whole answer (status, headers, body) to the bodiless request ``scope``
        describes, run in the pool: for the event loop's own routes (``api.live``), whose
        answers are small JSON."""
        environ = self._environ(scope, b"", None)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor(), self._run_whole, environ)

    def _run_whole(self, environ: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        response, chunk, rest = self._run(environ)
        pieces = [chunk]
        if rest is not None:
            try:
                pieces.extend(rest)
            finally:
                rest.close()
        return response.status, response.headers, b"".join(pieces)

    def _more(self, rest: _Closing) -> tuple[bytes, _Closing | None]:
        return self._take(rest, rest)

    @staticmethod
    def _take(
        iterator: Iterator[bytes], iterable: Iterable[bytes]
    ) -> tuple[bytes, _Closing | None]:
        """Up to about RESPONSE_CHUNK_BYTES of body; the iterator if more may follow."""
        pieces: list[bytes] = []
        size = 0
        for piece in iterator:
            pieces.append(piece)
            size += len(piece)
            if size >= RESPONSE_CHUNK_BYTES:
                return b"".join(pieces), _Closing(iterator, iterable)
        close = getattr(iterable, "close", None)
        if close is not None:
            close()
        return b"".join(pieces), None


class _Closing:
    """The rest of a response body, closed (as WSGI asks) once it is exhausted."""

    def __init__(self, iterator: Iterator[bytes], iterable: Iterable[bytes]) -> None:
        self.iterator = iterator
        self.close = getattr(iterable, "close", None) or (lambda: None)

    def __iter__(self) -> Iterator[bytes]:
        return self.iterator

    def __next__(self) -> bytes:
        return next(self.iterator)


def _error_response() -> _Response:
    response = _Response()
    response.status = 500
    response.headers = [(b"content-type", b"application/json"), *outside_app_headers()]
    response.written = [
        json.dumps(
            {"error": {"code": "internal_error", "message": "internal error", "details": {}}}
        ).encode()
    ]
    return response


async def _send_json(
    send: Send,
    status: int,
    code: str,
    message: str,
    details: Any,
    *,
    retry_after: int | None = None,
) -> None:
    body = json.dumps({"error": {"code": code, "message": message, "details": details}}).encode()
    extra = [(b"retry-after", str(retry_after).encode())] if retry_after is not None else []
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *extra,
                *outside_app_headers(),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


def create_asgi_app() -> LiveRoutes:
    """The served application: the event streams and held answers (``api.live``) in front of
    the Flask app's bridge."""
    from api.live import LiveRoutes
    from api.wsgi import app as flask_app

    return LiveRoutes(WsgiBridge(flask_app))


app = create_asgi_app()
