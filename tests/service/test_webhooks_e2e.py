"""Webhooks from a real Celery worker process (PostgreSQL, Redis) to a real HTTP receiver on
127.0.0.1: start, progress (at most every 2 s) and completed, each signed (checked by the
``standardwebhooks`` package); a receiver that is down a while gets every event once it is
up, and the log shows the failed attempts; a result-cache hit's completed webhook."""

from __future__ import annotations

import io
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from processes import stop_process_group

from api import create_app
from api.services import EXTENSION_KEY
from cli.server_cmds import worker_argv
from shared.auth import create_client
from shared.settings import Settings
from tests.conftest import _wait_for_worker, service_env
from tests.service.webhook_receiver import Receiver, free_port, wait_for

pytestmark = pytest.mark.slow

HOOK_ENV = {
    "STYLEQUEUE_WEBHOOK_ALLOW_PRIVATE": "true",  # the receiver is on 127.0.0.1
    "STYLEQUEUE_WEBHOOK_RETRY_SECONDS": "0.5",  # every retry half a second after the last
}
PARAMS = {"size": 32, "iterations": 150, "scales": 1}  # seconds, even on a quiet machine: progress


class Stack:
    def __init__(self, http: FlaskClient, key: str, secret: str) -> None:
        self.http, self.key, self.secret = http, key, secret

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def submit(
        self, image_bytes: Callable[[str], bytes], params: dict[str, Any] = PARAMS, **fields: str
    ) -> dict[str, Any]:
        response = self.http.post(
            "/v1/jobs",
            data={
                "content": (io.BytesIO(image_bytes("tubingen")), "content.png"),
                "style": (io.BytesIO(image_bytes("starry_night")), "style.png"),
                "params": json.dumps(params),
                **fields,
            },
            headers=self.auth,
        )
        assert response.status_code == 202, response.json
        job: dict[str, Any] = response.json
        return job

    def deliveries(self, job_id: str) -> list[dict[str, Any]]:
        response = self.http.get(f"/v1/jobs/{job_id}/webhooks", headers=self.auth)
        assert response.status_code == 200, response.json
        found: list[dict[str, Any]] = response.json["deliveries"]
        return found

    def job(self, job_id: str) -> dict[str, Any]:
        found: dict[str, Any] = self.http.get(f"/v1/jobs/{job_id}", headers=self.auth).json
        return found


@pytest.fixture(scope="module")
def stack(
    postgresql_url: str, redis_url: str, redis_prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    env = {
        **service_env(
            database_url=postgresql_url,
            redis_url=redis_url,
            redis_prefix=f"{redis_prefix}webhooks:",
            data_dir=tmp_path_factory.mktemp("webhook-data"),
        ),
        **HOOK_ENV,
    }
    log_path = tmp_path_factory.mktemp("webhook-log") / "worker.log"
    argv = worker_argv(hostname=f"hooks-{redis_prefix.strip(':')}@%h", quiet=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).parent.parent.parent,
            start_new_session=True,
        )
    saved = {name: os.environ.get(name) for name in HOOK_ENV}
    os.environ.update(HOOK_ENV)  # the API in this process checks the URLs at submit
    try:
        _wait_for_worker(process, log_path)
        app = create_app(Settings.from_env(env))
        app.config["TESTING"] = True
        with app.extensions[EXTENSION_KEY].db.session() as session:
            client, key = create_client(session, "hooks-e2e")
            secret = client.webhook_secret
        assert secret is not None
        yield Stack(app.test_client(), key, secret)
        app.extensions[EXTENSION_KEY].db.dispose()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        stop_process_group(process)


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _all_delivered(stack: Stack, job_id: str) -> list[dict[str, Any]] | None:
    found = stack.deliveries(job_id)
    done = found and found[-1]["event"] == "completed"
    return found if done and all(d["state"] == "delivered" for d in found) else None


def test_start_progress_and_completed_arrive_signed_with_the_job_json(
    stack: Stack, image_bytes: Callable[[str], bytes]
) -> None:
    receiver = Receiver(free_port()).start()
    try:
        job = stack.submit(
            image_bytes,
            webhook=receiver.url,
            webhook_events="start,progress,completed",
            cache="false",
        )
        deliveries = wait_for("every delivery", lambda: _all_delivered(stack, job["id"]), 180)
        events = [d["event"] for d in deliveries]
        assert events[0] == "start" and events[-1] == "completed", events
        assert set(events[1:-1]) == {"progress"} and events.count("completed") == 1
        progress = [_at(d["created_at"]) for d in deliveries if d["event"] == "progress"]
        assert all(
            (b - a).total_seconds() >= 2.0 for a, b in zip(progress, progress[1:], strict=False)
        )
        verified = receiver.bodies(stack.secret)  # raises unless every POST is signed right
        assert [event for event, _ in verified] == events  # one POST each, in order
        by_event = {event: body for event, body in verified}
        assert by_event["start"]["status"] == "running" and by_event["start"]["attempts"] == 1
        final = stack.job(job["id"])
        assert final["status"] == "succeeded"
        assert by_event["completed"]["status"] == "succeeded"
        assert by_event["completed"]["id"] == job["id"]
        assert by_event["completed"]["urls"] == final["urls"]
        assert by_event["completed"]["finished_at"] == final["finished_at"]
        # The same job again is a result-cache hit: born succeeded, its completed webhook too.
        again = stack.submit(image_bytes, webhook=receiver.url)
        assert again["status"] == "succeeded" and again["cached"] is True
        [hit] = wait_for("the cache hit's delivery", lambda: _all_delivered(stack, again["id"]))
        assert hit["event"] == "completed" and hit["attempts"] == 1
        event, body = receiver.bodies(stack.secret)[-1]
        assert (event, body["id"], body["cached"]) == ("completed", again["id"], True)
    finally:
        receiver.stop()


def test_a_receiver_down_a_while_gets_every_event_once_it_is_up(
    stack: Stack, image_bytes: Callable[[str], bytes]
) -> None:
    receiver = Receiver(free_port())  # not started: every connection is refused
    try:
        job = stack.submit(
            image_bytes,
            {**PARAMS, "iterations": 2},
            webhook=receiver.url,
            webhook_events="start,completed",
            cache="false",
        )

        def failed_twice() -> bool:
            found = stack.deliveries(job["id"])
            return len(found) == 2 and all(d["attempts"] >= 2 for d in found)

        wait_for("two failed attempts of start and completed", failed_twice, 180)
        assert stack.job(job["id"])["status"] == "succeeded"
        receiver.start()
        deliveries = wait_for("every delivery", lambda: _all_delivered(stack, job["id"]))
        assert [d["event"] for d in deliveries] == ["start", "completed"]
        for delivery in deliveries:
            failures = [a for a in delivery["log"] if a["status_code"] is None]
            assert len(failures) >= 2 and all(a["error"] for a in failures), delivery["log"]
            assert delivery["log"][-1]["status_code"] == 204
        verified = receiver.bodies(stack.secret)
        # Each once; after retries, in no promised order (each is the job as it was then).
        assert sorted(event for event, _ in verified) == ["completed", "start"]
        ids = sorted(r.headers["webhook-id"] for r in receiver.received)
        assert ids == sorted(d["id"] for d in deliveries)
    finally:
        receiver.stop()
