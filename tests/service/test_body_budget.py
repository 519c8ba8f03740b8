"""The serving bridge's budget for request bodies: what one process holds at once is bounded.

Many clients uploading at once (each within its own size and rate limits) must
not exhaust an API process's memory: a request whose body would take the bytes
held past the budget is answered 503 ``server_busy`` with ``Retry-After``, unread,
and the bytes of a finished request are given back. Driven through the real
``api.asgi.WsgiBridge`` as the asyncio worker drives it (ASGI messages), in
front of a small Flask app that echoes the body's length.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from flask import Flask, request

from api.asgi import WsgiBridge

BUDGET = 1000
LIMIT = 600  # the app's MAX_CONTENT_LENGTH


def echo_app() -> Flask:
    app = Flask("echo")
    app.config["MAX_CONTENT_LENGTH"] = LIMIT

    @app.post("/")
    def echo() -> dict[str, int]:
        return {"bytes": len(request.get_data())}

    return app


class Client:
    """One request over the bridge: the body in the pieces given, each after its event."""

    def __init__(self, length: int | None) -> None:
        self.headers = [(b"content-type", b"application/octet-stream")]
        if length is None:
            self.headers.append((b"transfer-encoding", b"chunked"))
        else:
            self.headers.append((b"content-length", str(length).encode()))
        self.pieces: asyncio.Queue[tuple[bytes, bool]] = asyncio.Queue()
        self.status: int | None = None
        self.response_headers: dict[bytes, bytes] = {}
        self.body = b""
        self.answered = asyncio.Event()

    def scope(self) -> dict[str, Any]:
        return {
            "type": "http",
            "method": "POST",
            "path": "/",
            "raw_path": b"/",
            "query_string": b"",
            "headers": self.headers,
            "http_version": "1.1",
            "scheme": "http",
            "server": ("127.0.0.1", 8000),
            "client": ("127.0.0.1", 50000),
        }

    def give(self, data: bytes, *, more: bool) -> None:
        self.pieces.put_nowait((data, more))

    async def receive(self) -> dict[str, Any]:
        data, more = await self.pieces.get()
        return {"type": "http.request", "body": data, "more_body": more}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.response_headers = dict(message["headers"])
        else:
            self.body += message.get("body", b"")
            if not message.get("more_body", False):
                self.answered.set()

    def error_code(self) -> str:
        return str(json.loads(self.body)["error"]["code"])


async def answered(client: Client) -> None:
    await asyncio.wait_for(client.answered.wait(), timeout=10)


def test_bodies_past_the_budget_are_a_503_and_a_finished_request_gives_its_bytes_back() -> None:
    async def scenario() -> None:
        bridge = WsgiBridge(echo_app(), threads=2, body_budget_bytes=BUDGET)

        holding = Client(LIMIT)  # announces 600 bytes and sends them slowly
        holding_task = asyncio.create_task(bridge(holding.scope(), holding.receive, holding.send))
        holding.give(b"x" * 100, more=True)
        await asyncio.sleep(0)
        assert bridge.buffered_bytes == LIMIT

        over = Client(500)  # 600 + 500 > 1000: refused at once, unread
        await bridge(over.scope(), over.receive, over.send)
        assert over.status == 503
        assert over.error_code() == "server_busy"
        assert over.response_headers[b"retry-after"] == b"5"
        assert over.pieces.empty()  # nothing was asked of it
        assert bridge.buffered_bytes == LIMIT

        fits = Client(300)  # 600 + 300 fits
        fits.give(b"y" * 300, more=False)
        await bridge(fits.scope(), fits.receive, fits.send)
        assert fits.status == 200, fits.body
        assert json.loads(fits.body) == {"bytes": 300}
        assert bridge.buffered_bytes == LIMIT

        chunked = Client(None)  # no length announced: counted as it arrives
        chunked_task = asyncio.create_task(bridge(chunked.scope(), chunked.receive, chunked.send))
        chunked.give(b"z" * 300, more=True)
        chunked.give(b"z" * 300, more=True)  # 600 + 600 > 1000
        await answered(chunked)
        await chunked_task
        assert chunked.status == 503
        assert chunked.error_code() == "server_busy"

        holding.give(b"x" * 500, more=False)
        await answered(holding)
        await holding_task
        assert holding.status == 200
        assert json.loads(holding.body) == {"bytes": LIMIT}
        assert bridge.buffered_bytes == 0

        again = Client(500)  # the budget is free again
        again.give(b"w" * 500, more=False)
        await bridge(again.scope(), again.receive, again.send)
        assert again.status == 200

    asyncio.run(scenario())


def test_one_request_at_the_apps_limit_always_fits_an_idle_process() -> None:
    async def scenario() -> None:
        bridge = WsgiBridge(echo_app(), threads=1, body_budget_bytes=100)  # below the app's limit
        client = Client(LIMIT)
        client.give(b"x" * LIMIT, more=False)
        await bridge(client.scope(), client.receive, client.send)
        assert client.status == 200
        assert bridge.buffered_bytes == 0

    asyncio.run(scenario())
