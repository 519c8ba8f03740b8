"""Webhooks in the API and the sender, against a real HTTP receiver on 127.0.0.1: the submit's
checks (nothing stored on a 400), the outbox written with the job's changes, signatures
checked by the ``standardwebhooks`` package, retries, giving up, redelivery, the log."""

from __future__ import annotations

import io
import json
import re
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update
from standardwebhooks import Webhook
from werkzeug.test import TestResponse

from api.services import EXTENSION_KEY
from shared import jobs, webhook_outbox
from shared.auth import create_client
from shared.db import Database
from shared.models import JobWebhook, WebhookDelivery, utcnow
from shared.webhooks import is_public, new_secret, parse_events, sign
from tests.service.conftest import TINY_PARAMS
from tests.service.webhook_receiver import Receiver, free_port
from worker.webhook_sender import WebhookSender

# The Standard Webhooks specification's example (its README and every reference library's tests).
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY = (
    "msg_p5jXN8AQM9LWM0D4loKWxJek",
    1614265330,
    b'{"test": 2432232314}',
)
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_signature_is_the_specifications_own_example() -> None:
    assert sign(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE


def test_a_fresh_secret_signs_what_standardwebhooks_accepts_and_only_that() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_") and secret != new_secret()
    body = b'{"id":"x"}'
    now = int(utcnow().timestamp())
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(now)}
    signed = {**headers, "webhook-signature": sign(secret, "msg_1", now, body)}
    assert Webhook(secret).verify(body, signed) == {"id": "x"}
    with pytest.raises(Exception, match="(?i)signature"):
        Webhook(new_secret()).verify(body, signed)
    with pytest.raises(Exception, match="(?i)signature"):
        Webhook(secret).verify(b'{"id":"y"}', signed)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "0.0.0.0",
        "100.64.0.1",
    ],
)
def test_private_addresses_are_not_public(address: str) -> None:
    assert not is_public(address)


def test_public_addresses_are() -> None:
    assert is_public("93.184.215.14") and is_public("2606:4700::1111")


def test_events_are_parsed_in_order_with_completed_by_default() -> None:
    assert parse_events(None) == ("completed",)
    assert parse_events(" completed , start,progress") == ("start", "progress", "completed")


# ---------------------------------------------------------------- the API


@pytest.fixture
def client_and_key(app: Flask) -> tuple[int, str, str]:
    """A new client: (its id, its key, its webhook secret)."""
    with app.extensions[EXTENSION_KEY].db.session() as session:
        client, key = create_client(session, f"hooks-{uuid.uuid4().hex[:6]}")
        assert client.webhook_secret is not None
        return client.id, key, client.webhook_secret


@pytest.fixture
def post(
    http: FlaskClient, client_and_key: tuple[int, str, str], image_bytes: Callable[[str], bytes]
) -> Callable[..., TestResponse]:
    def send(**fields: str) -> TestResponse:
        data: dict[str, Any] = {
            "content": (io.BytesIO(image_bytes("tubingen")), "content.png"),
            "style": (io.BytesIO(image_bytes("starry_night")), "style.png"),
            "params": json.dumps(TINY_PARAMS),
            "cache": "false",
            **fields,
        }
        return http.post(
            "/v1/jobs",
            data=data,
            headers={"Authorization": f"Bearer {client_and_key[1]}"},
            content_type="multipart/form-data",
        )

    return send


@pytest.fixture
def allow_private(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STYLEQUEUE_WEBHOOK_ALLOW_PRIVATE", "true")


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        ({"webhook": "http://127.0.0.1:9/x"}, "webhook", "private_address"),
        ({"webhook": "http://localhost/x"}, "webhook", "private_address"),
        ({"webhook": "http://[::1]:80/"}, "webhook", "private_address"),
        ({"webhook": "http://169.254.169.254/latest/meta-data"}, "webhook", "private_address"),
        ({"webhook": "ftp://example.com/x"}, "webhook", "scheme"),
        ({"webhook": "http://user:pw@example.com/x"}, "webhook", "credentials"),
        ({"webhook": "http:///x"}, "webhook", "no_host"),
        ({"webhook": "http://no-such-host.invalid/x"}, "webhook", "unresolvable"),
        (
            {"webhook": "https://example.com/x", "webhook_events": "finished"},
            "webhook_events",
            "unknown_event",
        ),
        ({"webhook_events": "start"}, "webhook_events", "no_url"),
    ],
)
def test_a_bad_webhook_is_a_400_naming_the_reason_and_stores_nothing(
    post: Callable[..., TestResponse],
    counts: Callable[[], tuple[int, int, int, int]],
    fields: dict[str, str],
    field: str,
    reason: str,
) -> None:
    before = counts()
    response = post(**fields)
    assert response.status_code == 400, response.json
    error = response.json["error"]
    assert error["code"] == "invalid_webhook"
    assert error["details"] == {"field": field, "reason": reason}
    assert counts() == before


def test_a_client_without_a_secret_is_told_how_to_get_one(
    app: Flask,
    post: Callable[..., TestResponse],
    client_and_key: tuple[int, str, str],
    allow_private: None,
) -> None:
    db: Database = app.extensions[EXTENSION_KEY].db
    with db.session() as session:
        from shared.models import ApiClient

        session.execute(
            update(ApiClient).where(ApiClient.id == client_and_key[0]).values(webhook_secret=None)
        )
        session.commit()
    response = post(webhook="http://127.0.0.1:9/x")
    assert response.status_code == 400
    assert response.json["error"]["details"]["reason"] == "no_secret"
    assert "rotate-webhook-secret" in response.json["error"]["message"]


def _deliveries(http: FlaskClient, key: str, job_id: str) -> list[dict[str, Any]]:
    response = http.get(f"/v1/jobs/{job_id}/webhooks", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.json
    deliveries: list[dict[str, Any]] = response.json["deliveries"]
    return deliveries


def test_a_cancel_of_a_queued_job_is_delivered_signed_retried_and_logged(
    app: Flask,
    http: FlaskClient,
    post: Callable[..., TestResponse],
    client_and_key: tuple[int, str, str],
    make_api_key: Callable[..., str],
    allow_private: None,
) -> None:
    client_id, key, secret = client_and_key
    db: Database = app.extensions[EXTENSION_KEY].db
    receiver = Receiver(free_port(), status=500).start()
    try:
        response = post(webhook=receiver.url, webhook_events="start,completed")
        assert response.status_code == 202, response.json
        job_id = response.json["id"]
        assert _deliveries(http, key, job_id) == []  # queued: nothing to say yet
        # Another client sees no such job, nor its deliveries.
        other = {"Authorization": f"Bearer {make_api_key()}"}
        assert http.get(f"/v1/jobs/{job_id}/webhooks", headers=other).status_code == 404
        assert (
            http.post(
                f"/v1/jobs/{job_id}/cancel", headers={"Authorization": f"Bearer {key}"}
            ).status_code
            == 200
        )
        [pending] = _deliveries(http, key, job_id)
        assert (pending["event"], pending["state"], pending["attempts"]) == (
            "completed",
            "pending",
            0,
        )

        sender = WebhookSender(db, "test-sender")
        sender._schedule = (0.0, 0.0, 0.0)
        assert sender.deliver_due() >= 1
        assert sender.deliver_due() >= 1  # a zero wait: due again at once
        [failed] = _deliveries(http, key, job_id)
        assert failed["state"] == "pending" and failed["attempts"] == 2
        assert failed["log"][0]["status_code"] == 500 and failed["status_code"] == 500
        assert failed["error"] == "answered 500"

        receiver.status = 200
        _deliver_all(sender)
        [delivered] = _deliveries(http, key, job_id)
        assert delivered["state"] == "delivered", delivered
        assert [a["status_code"] for a in delivered["log"]][-1] == 200
        assert any(a["status_code"] == 500 for a in delivered["log"])
        verified = receiver.bodies(secret)  # raises unless every POST is signed right
        assert len(verified) == delivered["attempts"]
        event, body = verified[-1]
        assert event == "completed"
        assert body["id"] == job_id and body["status"] == "canceled"
        assert body == http.get(
            f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"}
        ).json | {"queue_seconds": body["queue_seconds"], "run_seconds": body["run_seconds"]}
        ids = {r.headers["webhook-id"] for r in receiver.received}
        assert ids == {delivered["id"]}  # every attempt of one delivery: one id
        assert {r.path for r in receiver.received} == {"/hooks/stylequeue?x=1"}
    finally:
        receiver.stop()


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _deliver_all(sender: WebhookSender) -> int:
    # Until nothing is due now: the zero waits of the test's schedule make retries due at once.
    made = 0
    for _ in range(10):
        done = sender.deliver_due()
        made += done
        if done == 0:
            break
    return made


def test_a_refused_connection_is_retried_on_schedule_then_given_up_after_24_hours(
    app: Flask,
    http: FlaskClient,
    post: Callable[..., TestResponse],
    client_and_key: tuple[int, str, str],
    allow_private: None,
) -> None:
    _client_id, key, _secret = client_and_key
    db: Database = app.extensions[EXTENSION_KEY].db
    response = post(webhook=f"http://127.0.0.1:{free_port()}/nobody")  # nothing listens
    job_id = response.json["id"]
    with db.session() as session:
        jobs.cancel_job(session, uuid.UUID(job_id), client_id=None)
    sender = WebhookSender(db, "test-sender")
    sender._schedule = (600.0,)
    assert sender.deliver_due() >= 1
    [first] = _deliveries(http, key, job_id)
    assert first["state"] == "pending" and first["attempts"] == 1
    assert "Connect" in first["error"]
    assert sender.deliver_due() == 0  # not due for another 10 minutes
    # 23 h 55 min after the event, a 10 minute wait is cut to end at the 24 hours.
    with db.session() as session:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.job_id == uuid.UUID(job_id))
            .values(created_at=utcnow() - timedelta(hours=23, minutes=55), next_attempt_at=utcnow())
        )
        session.commit()
    assert sender.deliver_due() >= 1
    [last] = _deliveries(http, key, job_id)
    assert last["state"] == "pending" and last["attempts"] == 2
    wait = _at(last["next_attempt_at"]) - _at(last["last_attempt_at"])
    assert timedelta(minutes=4) < wait < timedelta(minutes=5, seconds=5), wait
    # The event was a day ago: the next failure gives up, recorded.
    with db.session() as session:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.job_id == uuid.UUID(job_id))
            .values(created_at=utcnow() - timedelta(hours=24), next_attempt_at=utcnow())
        )
        session.commit()
    assert sender.deliver_due() >= 1
    [given_up] = _deliveries(http, key, job_id)
    assert given_up["state"] == "failed" and given_up["attempts"] == 3
    assert given_up["next_attempt_at"] is None
    # A redelivery makes it due again, with the same id.
    with db.session() as session:
        webhook_outbox.redeliver(session, uuid.UUID(job_id), given_up["id"], by="op")
    [again] = _deliveries(http, key, job_id)
    assert again["state"] == "pending" and again["id"] == given_up["id"]
    assert again["log"][-1]["redelivered_by"] == "op"


CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


def _log_in(admin: FlaskClient, key: str) -> TestResponse:
    """POST /admin/login with ``key``, as the login form does."""
    found = CSRF_INPUT.search(admin.get("/admin/login").text)
    assert found, "no CSRF token on the login page"
    return admin.post("/admin/login", data={"key": key, "csrf_token": found[1], "next": "/admin"})


def test_an_admin_redelivers_a_failed_delivery_from_admin_and_nobody_else_may(
    app: Flask,
    http: FlaskClient,
    post: Callable[..., TestResponse],
    client_and_key: tuple[int, str, str],
    allow_private: None,
) -> None:
    _client_id, key, _secret = client_and_key
    db: Database = app.extensions[EXTENSION_KEY].db
    job_id = post(webhook=f"http://127.0.0.1:{free_port()}/nobody").json["id"]  # refused
    with db.session() as session:
        jobs.cancel_job(session, uuid.UUID(job_id), client_id=None)
    with db.session() as session:  # the event was a day ago: its first failure gives up
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.job_id == uuid.UUID(job_id))
            .values(created_at=utcnow() - timedelta(hours=24))
        )
        session.commit()
    sender = WebhookSender(db, "test-sender")
    assert _deliver_all(sender) >= 1
    [failed] = _deliveries(http, key, job_id)
    assert (failed["state"], failed["attempts"]) == ("failed", 1)
    route = f"/admin/jobs/{job_id}/webhooks/{failed['id']}/redeliver"
    as_json = {"Accept": "application/json"}

    # A client's key is no admin login, nor does /admin take it as a bearer key.
    stranger = app.test_client()
    refused = _log_in(stranger, key)
    assert refused.status_code == 403 and "is not an admin key" in refused.text
    bearer = stranger.post(route, headers={**as_json, "Authorization": f"Bearer {key}"})
    assert bearer.status_code == 401
    assert bearer.json["error"]["code"] == "login_required"
    assert _deliveries(http, key, job_id) == [failed]  # untouched

    with db.session() as session:
        admin_client, admin_key = create_client(
            session, f"ops-{uuid.uuid4().hex[:6]}", is_admin=True
        )
        admin_name = admin_client.name
    admin = app.test_client()
    assert _log_in(admin, admin_key).status_code == 303
    found = CSRF_INPUT.search(admin.get(f"/admin/jobs/{job_id}").text)
    assert found, "no CSRF token on the job's page"
    csrf = {"X-CSRF-Token": found[1]}
    assert admin.post(route, headers=as_json).status_code == 403  # no CSRF token: refused
    assert _deliveries(http, key, job_id) == [failed]

    done = admin.post(route, headers=csrf)
    assert done.status_code == 303
    assert done.headers["Location"].endswith(f"/admin/jobs/{job_id}#webhooks")
    [again] = _deliveries(http, key, job_id)
    assert (again["id"], again["state"], again["attempts"]) == (failed["id"], "pending", 1)
    assert again["next_attempt_at"] is not None
    assert again["log"][:-1] == failed["log"]
    assert again["log"][-1] | {"at": None} == {
        "at": None,
        "status_code": None,
        "error": None,
        "seconds": None,
        "redelivered_by": admin_name,
    }

    unknown = admin.post(
        f"/admin/jobs/{job_id}/webhooks/msg_{uuid.uuid4().hex}/redeliver",
        headers={**csrf, **as_json},
    )
    assert unknown.status_code == 404 and unknown.mimetype == "application/json"
    assert unknown.json["error"]["code"] == "delivery_not_found"
    assert _deliveries(http, key, job_id) == [again]


def test_without_allow_private_the_sender_refuses_a_private_address_too(
    app: Flask,
    http: FlaskClient,
    post: Callable[..., TestResponse],
    client_and_key: tuple[int, str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An address allowed at submit (or a name that resolves elsewhere since) is checked
    again at each attempt."""
    _client_id, key, _secret = client_and_key
    db: Database = app.extensions[EXTENSION_KEY].db
    receiver = Receiver(free_port()).start()
    try:
        monkeypatch.setenv("STYLEQUEUE_WEBHOOK_ALLOW_PRIVATE", "true")
        job_id = post(webhook=receiver.url).json["id"]
        with db.session() as session:
            jobs.cancel_job(session, uuid.UUID(job_id), client_id=None)
        monkeypatch.setenv("STYLEQUEUE_WEBHOOK_ALLOW_PRIVATE", "false")
        assert WebhookSender(db, "test-sender").deliver_due() >= 1
        [refused] = _deliveries(http, key, job_id)
        assert refused["state"] == "pending" and "private" in refused["error"]
        assert receiver.received == []
    finally:
        receiver.stop()


def test_two_senders_never_claim_the_same_delivery(
    app: Flask, post: Callable[..., TestResponse], allow_private: None
) -> None:
    db: Database = app.extensions[EXTENSION_KEY].db
    ids = [post(webhook="http://127.0.0.1:9/x").json["id"] for _ in range(3)]
    with db.session() as session:
        for job_id in ids:
            jobs.cancel_job(session, uuid.UUID(job_id), client_id=None)
    with db.session() as one, db.session() as two:
        first = webhook_outbox.claim_due(one, "a", hold_seconds=60, limit=100)
        second = webhook_outbox.claim_due(two, "b", hold_seconds=60, limit=100)
    mine = {d.job_id for d in first} & {uuid.UUID(i) for i in ids}
    assert mine == {uuid.UUID(i) for i in ids}
    assert not {d.id for d in first} & {d.id for d in second}


def test_each_body_is_the_job_as_its_change_left_it_however_late_it_is_sent(
    app: Flask,
    http: FlaskClient,
    post: Callable[..., TestResponse],
    client_and_key: tuple[int, str, str],
    allow_private: None,
) -> None:
    """A sender that gets to a ``start`` only after the job ended still sends ``running``."""
    _client_id, key, secret = client_and_key
    db: Database = app.extensions[EXTENSION_KEY].db
    receiver = Receiver(free_port()).start()
    try:
        job_id = post(webhook=receiver.url, webhook_events="start,completed").json["id"]
        with db.session() as session:
            claim = jobs.claim_job(session, uuid.UUID(job_id), worker="w/1", lease_seconds=30)
            assert claim is not None
            jobs.finish_job(session, claim, result_file="result.a1.png")
        _deliver_all(WebhookSender(db, "test-sender"))
        bodies = dict(receiver.bodies(secret))
        assert bodies["start"]["status"] == "running" and bodies["start"]["attempts"] == 1
        assert bodies["start"]["finished_at"] is None
        assert bodies["completed"]["status"] == "succeeded"
        now = http.get(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"}).json
        assert bodies["completed"]["finished_at"] == now["finished_at"]
    finally:
        receiver.stop()


def test_progress_is_written_at_most_every_two_seconds(
    app: Flask, post: Callable[..., TestResponse], allow_private: None
) -> None:
    db: Database = app.extensions[EXTENSION_KEY].db
    job_id = uuid.UUID(post(webhook="http://127.0.0.1:9/x", webhook_events="progress").json["id"])
    with db.session() as session:
        for _ in range(5):
            webhook_outbox.record_change(session, job_id, "progress")
            session.commit()
        webhook_outbox.record_change(session, job_id, "completed")  # not asked for
        session.commit()
        count = len(webhook_outbox.list_deliveries(session, job_id))
        assert count == 1
        session.execute(
            update(JobWebhook)
            .where(JobWebhook.job_id == job_id)
            .values(progress_at=utcnow() - timedelta(seconds=2.1))
        )
        webhook_outbox.record_change(session, job_id, "progress")
        session.commit()
        events = session.scalars(
            select(WebhookDelivery.event).where(WebhookDelivery.job_id == job_id)
        ).all()
        assert events == ["progress", "progress"]
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.job_id == job_id)
            .values(state="delivered")
        )
        session.commit()


def test_openapi_documents_the_fields_and_the_log_that_the_api_answers(
    http: FlaskClient,
    post: Callable[..., TestResponse],
    client_and_key: tuple[int, str, str],
    allow_private: None,
) -> None:
    import jsonschema_rs

    spec = http.get("/openapi.json").json
    form = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert {"webhook", "webhook_events"} <= set(form["schema"]["properties"])
    answer = spec["paths"]["/v1/jobs/{job_id}/webhooks"]["get"]["responses"]["200"]
    validator = jsonschema_rs.validator_for(answer["content"]["application/json"]["schema"])
    key = client_and_key[1]
    job_id = post(webhook="http://127.0.0.1:9/x").json["id"]
    http.post(f"/v1/jobs/{job_id}/cancel", headers={"Authorization": f"Bearer {key}"})
    body = http.get(f"/v1/jobs/{job_id}/webhooks", headers={"Authorization": f"Bearer {key}"}).json
    assert len(body["deliveries"]) == 1
    validator.validate(body)
    body["deliveries"][0]["state"] = "lost"
    assert not validator.is_valid(body)
