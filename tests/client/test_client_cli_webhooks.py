"""``stylequeue webhooks ID`` through click's CliRunner, against the real API app in-process,
with the workers' real sender posting to a real receiver on 127.0.0.1."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result
from flask import Flask
from service.webhook_receiver import Receiver, free_port

from api.services import EXTENSION_KEY
from cli.client_cmds import ClientConfig
from cli.main import cli
from client import StylequeueClient
from worker.webhook_sender import WebhookSender

DATA = Path(__file__).resolve().parents[1] / "data"
CONTENT = str(DATA / "tubingen.png")
STYLE = str(DATA / "starry_night.png")
TINY = ["--param", "size=32", "--param", "iterations=2", "--param", "scales=1"]
RunCli = Callable[..., Result]


@pytest.fixture
def run_cli(app: Flask, api_key: str) -> RunCli:
    """``stylequeue ARGS...`` with the client going straight into the app."""

    def run(*args: str, key: str = api_key) -> Result:
        config = ClientConfig(
            lambda: StylequeueClient(
                "http://stylequeue.test", key, transport=httpx.WSGITransport(app=app)
            )
        )
        return CliRunner().invoke(cli, list(args), obj=config)

    return run


def _attempt(sender: WebhookSender, receiver: Receiver, received: int) -> None:
    # Rounds of the sender until the receiver has had ``received`` POSTs (the test database
    # is the session's: other tests' deliveries may be due too).
    for _ in range(20):
        if len(receiver.received) >= received:
            return
        sender.deliver_due()
    raise AssertionError(f"the receiver got {len(receiver.received)} of {received} POSTs")


def test_webhooks_prints_one_line_per_delivery_as_its_attempts_go(
    app: Flask, run_cli: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STYLEQUEUE_WEBHOOK_ALLOW_PRIVATE", "true")
    receiver = Receiver(free_port(), status=500).start()
    try:
        submitted = run_cli("submit", CONTENT, STYLE, *TINY, "--webhook", receiver.url)
        assert submitted.exit_code == 0, submitted.stderr
        job_id = submitted.stdout.strip()
        queued = run_cli("webhooks", job_id)  # nothing to say before the job ends
        assert (queued.exit_code, queued.stdout) == (0, "")
        assert "no webhook deliveries" in queued.stderr
        assert run_cli("cancel", job_id).exit_code == 0

        pending = run_cli("webhooks", job_id)
        assert pending.exit_code == 0, pending.stderr
        assert [line.split() for line in pending.stdout.splitlines()] == [
            ["EVENT", "STATE", "ATTEMPTS", "STATUS", "ERROR"],
            ["completed", "pending", "0", "-", "-"],
        ]

        sender = WebhookSender(app.extensions[EXTENSION_KEY].db, "cli-test-sender")
        sender._schedule = (0.0,)  # a failed attempt is due again at once
        _attempt(sender, receiver, 1)
        failed = run_cli("webhooks", job_id).stdout.splitlines()
        assert failed[1].split() == ["completed", "pending", "1", "500", "answered", "500"]

        receiver.status = 204
        _attempt(sender, receiver, 2)
        delivered = run_cli("webhooks", job_id).stdout.splitlines()
        assert delivered[1].split() == ["completed", "delivered", "2", "204", "-"]

        as_json = json.loads(run_cli("webhooks", job_id, "--json").stdout)
        [delivery] = as_json
        assert delivery["id"].startswith("msg_") and delivery["url"] == receiver.url
        assert [a["status_code"] for a in delivery["log"]] == [500, 204]
        assert {r.headers["webhook-id"] for r in receiver.received} == {delivery["id"]}
    finally:
        receiver.stop()


def test_webhooks_of_an_unknown_job_is_one_error_line(run_cli: RunCli) -> None:
    result = run_cli("webhooks", str(uuid.uuid4()))
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "job_not_found" in lines[0]


def test_the_help_of_webhooks_names_its_variables() -> None:
    text = CliRunner().invoke(cli, ["webhooks", "--help"]).output
    assert "STYLEQUEUE_URL" in text and "STYLEQUEUE_API_KEY" in text
