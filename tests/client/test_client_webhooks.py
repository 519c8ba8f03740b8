"""The client's and the command's webhook options, against the real API app and a real
`stylequeue api`; `stylequeue keys rotate-webhook-secret`."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

import client
from cli.main import cli
from client import BadRequestError, StylequeueClient, WebhookAttempt, WebhookDelivery
from shared.db import Database
from shared.models import ApiClient
from shared.webhooks import sign

DATA = Path(__file__).resolve().parents[1] / "data"
CONTENT = DATA / "tubingen.png"
STYLE = DATA / "starry_night.png"
TINY = {"size": 32, "iterations": 2, "scales": 1}


def test_submit_with_a_webhook_then_read_its_deliveries(
    sq: StylequeueClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STYLEQUEUE_WEBHOOK_ALLOW_PRIVATE", "true")
    job = sq.submit(
        CONTENT, [STYLE], TINY, webhook="http://127.0.0.1:9/hook", webhook_events=["completed"]
    )
    assert sq.webhooks(job.id) == []
    sq.cancel(job.id)
    [delivery] = sq.webhooks(job.id)
    assert (delivery.event, delivery.state, delivery.attempts) == ("completed", "pending", 0)
    assert delivery.url == "http://127.0.0.1:9/hook" and delivery.id.startswith("msg_")
    assert delivery.log == ()


def test_the_delivery_types_are_importable_from_the_package(
    sq: StylequeueClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert {"WebhookDelivery", "WebhookAttempt"} <= set(client.__all__)
    monkeypatch.setenv("STYLEQUEUE_WEBHOOK_ALLOW_PRIVATE", "true")
    job = sq.submit(CONTENT, [STYLE], TINY, webhook="http://127.0.0.1:9/hook")
    sq.cancel(job.id)
    [delivery] = sq.webhooks(job.id)
    assert isinstance(delivery, WebhookDelivery)
    parsed = WebhookDelivery.from_json(
        {
            "id": "msg_1",
            "event": "completed",
            "url": "https://example.com/hook",
            "state": "pending",
            "attempts": 1,
            "created_at": "2026-12-01T10:00:00Z",
            "log": [
                {"at": "2026-12-01T10:00:01Z", "status_code": 500, "error": "answered 500"},
                {"at": "2026-12-01T11:00:00Z", "redelivered_by": "ops"},
            ],
        }
    )
    assert parsed.log == (
        WebhookAttempt("2026-12-01T10:00:01Z", 500, "answered 500", None),
        WebhookAttempt("2026-12-01T11:00:00Z", None, None, None, redelivered_by="ops"),
    )


def test_a_loopback_webhook_is_refused_by_default(sq: StylequeueClient) -> None:
    with pytest.raises(BadRequestError) as raised:
        sq.submit(CONTENT, [STYLE], TINY, webhook="http://localhost:9/hook")
    assert raised.value.code == "invalid_webhook"
    assert raised.value.details["reason"] == "private_address"


def test_the_command_sends_the_webhook_and_says_why_it_is_refused(
    stylequeue_cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    done = stylequeue_cli(
        "submit",
        str(CONTENT),
        str(STYLE),
        "--param",
        "size=32",
        "--webhook",
        "http://127.0.0.1:9/hook",
        "--webhook-events",
        "start,completed",
    )
    assert done.returncode == 1 and done.stdout == ""
    assert "127.0.0.1" in done.stderr and "STYLEQUEUE_WEBHOOK_ALLOW_PRIVATE" in done.stderr
    bad = stylequeue_cli(
        "submit",
        str(CONTENT),
        str(STYLE),
        "--webhook",
        "https://x.test/",
        "--webhook-events",
        "end",
    )
    assert bad.returncode == 1 and "webhook_events: unknown event 'end'" in bad.stderr


def test_keys_create_shows_the_secret_and_rotate_replaces_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    env = {"STYLEQUEUE_DATA_DIR": str(tmp_path / "var")}
    runner = CliRunner()
    assert runner.invoke(cli, ["db", "upgrade"], env=env).exit_code == 0
    created = runner.invoke(cli, ["keys", "create", "bob"], env=env)
    assert created.exit_code == 0, created.output
    lines = created.output.strip().splitlines()
    key, secret = lines[-1], lines[1]
    assert key.startswith("sq_") and secret.startswith("whsec_")
    rotated = runner.invoke(cli, ["keys", "rotate-webhook-secret", "bob"], env=env)
    assert rotated.exit_code == 0, rotated.output
    new = rotated.output.strip().splitlines()[-1]
    assert new.startswith("whsec_") and new != secret
    database = Database(f"sqlite:///{(tmp_path / 'var' / 'stylequeue.sqlite3').resolve()}")
    try:
        with database.session() as session:
            stored = session.scalar(select(ApiClient.webhook_secret).where(ApiClient.name == "bob"))
    finally:
        database.dispose()
    assert stored == new
    assert sign(new, "m", 1, b"{}") != sign(secret, "m", 1, b"{}")
    missing = runner.invoke(cli, ["keys", "rotate-webhook-secret", "nobody"], env=env)
    assert missing.exit_code != 0 and "no client named 'nobody'" in missing.output
