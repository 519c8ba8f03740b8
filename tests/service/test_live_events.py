"""A job's live events (``GET /v1/jobs/{id}/events``) and ``Prefer: wait``, end to end.

The real API (``stylequeue api``: gunicorn's asyncio worker, 2 processes), a real
Celery worker and Redis: the worker publishes each change of a job's row, the API's
event loop hears it and streams (or answers a held request); nothing holds one of the
API's few threads meanwhile.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_process import ApiProcess
from click.testing import CliRunner
from fault_helpers import WorkerProcess
from processes import free_port

from api.change_feed import FALLBACK_SECONDS
from cli.client_cmds import ClientConfig
from cli.main import cli
from client import Job, JobStatus, StylequeueClient
from shared import jobs
from shared.auth import create_client
from shared.db import Database
from shared.settings import Settings

QUICK = '{"size": 32, "iterations": 200, "scales": 1}'  # a couple of seconds on one CPU thread
ENDLESS = '{"size": 32, "iterations": 5000, "scales": 1}'  # runs until canceled
STREAM_SECONDS = 120.0


@dataclass
class Stack:
    base_url: str
    key: str
    other_key: str
    files: dict[str, bytes]
    database_url: str

    def headers(self, key: str | None = None, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}", **extra}

    def submit(self, params: str = QUICK) -> dict[str, Any]:
        response = httpx.post(
            f"{self.base_url}/v1/jobs",
            headers=self.headers(),
            files={"content": self.files["content"], "style": self.files["style"]},
            data={"params": params, "cache": "false"},
            timeout=30.0,
        )
        assert response.status_code == 202, response.text
        found: dict[str, Any] = response.json()
        return found

    def get(self, job_id: str) -> dict[str, Any]:
        response = httpx.get(f"{self.base_url}/v1/jobs/{job_id}", headers=self.headers())
        assert response.status_code == 200, response.text
        found: dict[str, Any] = response.json()
        return found

    def cancel(self, job_id: str) -> None:
        httpx.post(f"{self.base_url}/v1/jobs/{job_id}/cancel", headers=self.headers())


@pytest.fixture(scope="module")
def stack(
    postgresql_url: str,
    redis_url: str,
    redis_prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
    image_bytes: Callable[[str], bytes],
) -> Iterator[Stack]:
    tmp_path = tmp_path_factory.mktemp("live")
    env = {
        "STYLEQUEUE_DATABASE_URL": postgresql_url,
        "STYLEQUEUE_REDIS_URL": redis_url,
        "STYLEQUEUE_REDIS_PREFIX": f"{redis_prefix}live:",
        "STYLEQUEUE_DATA_DIR": str(tmp_path / "data"),
        "STYLEQUEUE_DEVICE": "cpu",
        "STYLEQUEUE_HEARTBEAT_SECONDS": "0.2",
        "STYLEQUEUE_PREVIEW_SECONDS": "0.5",
        "OMP_NUM_THREADS": "1",
    }
    Settings.from_env(env).data_dir.mkdir(parents=True)
    db = Database(postgresql_url)
    with db.session() as session:
        _, key = create_client(session, f"live-{uuid.uuid4().hex[:6]}")
        _, other_key = create_client(session, f"live-other-{uuid.uuid4().hex[:6]}")
    db.dispose()
    api = ApiProcess(env, free_port(), tmp_path / "api.log")
    worker: WorkerProcess | None = None
    try:
        api.start()
        api.wait_ready()
        worker = WorkerProcess(env, tmp_path / "worker.log", "live")
        files = {"content": image_bytes("tubingen"), "style": image_bytes("starry_night")}
        yield Stack(api.base_url, key, other_key, files, postgresql_url)
    finally:
        if worker is not None:
            worker.stop()
        api.stop()


def read_events(
    lines: Iterator[str], *, until: Callable[[dict[str, Any]], bool] | None = None
) -> list[dict[str, Any]]:
    """The events of an open stream (id, event, data; comments left out) until it ends, or
    until ``until(event)`` holds for one."""
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    for line in lines:
        if line.startswith(":"):
            continue
        if line == "":
            if current:
                current["data"] = json.loads(current["data"])
                events.append(current)
                if until is not None and until(current):
                    return events
            current = {}
            continue
        name, _, value = line.partition(": ")
        current[name] = value
    return events


def stream(stack: Stack, job_id: str, **headers: str) -> Any:
    return httpx.stream(
        "GET",
        f"{stack.base_url}/v1/jobs/{job_id}/events",
        headers=stack.headers(**headers),
        timeout=httpx.Timeout(30.0, read=STREAM_SECONDS),
    )


def test_a_stream_follows_a_job_from_queued_to_done_then_ends(stack: Stack) -> None:
    job = stack.submit()
    with stream(stack, job["id"]) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-accel-buffering"] == "no"
        events = read_events(response.iter_lines())
    names = [e["event"] for e in events]
    assert names[0] == "status" and names[-1] == "done", names
    running = [e for e in events if e["event"] == "status" and e["data"]["status"] == "running"]
    assert running or events[0]["data"]["status"] == "running", names
    progress = [e["data"] for e in events if e["event"] == "progress"]
    assert progress, names
    assert set(progress[0]) == {"iteration", "iterations", "percent", "eta_seconds"}
    assert [p["iteration"] for p in progress] == sorted(p["iteration"] for p in progress)
    done = events[-1]["data"]
    assert done["status"] == "succeeded" and done["id"] == job["id"]
    assert done == stack.get(job["id"]) | {"queue_seconds": done["queue_seconds"]} | {
        "run_seconds": done["run_seconds"]
    }
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(set(ids)), ids
    previews = [e["data"] for e in events if e["event"] == "preview"]
    assert all(p == {"url": f"/v1/jobs/{job['id']}/preview"} for p in previews)


def test_last_event_id_resumes_without_repeating(stack: Stack) -> None:
    job = stack.submit()
    with stream(stack, job["id"]) as response:
        first = read_events(response.iter_lines(), until=lambda e: e["event"] == "progress")
    assert first[-1]["event"] == "progress", first
    last_id = first[-1]["id"]
    with stream(stack, job["id"], **{"Last-Event-ID": last_id}) as response:
        rest = read_events(response.iter_lines())
    assert rest and rest[-1]["event"] == "done", rest
    assert all(int(e["id"]) > int(last_id) for e in rest), (last_id, rest)
    # It was running before and still is: its status is not sent again.
    assert not [e for e in rest if e["event"] == "status"], rest
    seen = {(e["event"], json.dumps(e["data"], sort_keys=True)) for e in first}
    assert not [e for e in rest if (e["event"], json.dumps(e["data"], sort_keys=True)) in seen]


def test_a_finished_jobs_stream_is_one_done_and_others_jobs_are_404(stack: Stack) -> None:
    job = stack.submit()
    waited = httpx.get(
        f"{stack.base_url}/v1/jobs/{job['id']}",
        headers=stack.headers(Prefer="wait=60"),
        timeout=90.0,
    )
    assert waited.json()["status"] == "succeeded", waited.text
    with stream(stack, job["id"]) as response:
        events = read_events(response.iter_lines())
    assert [e["event"] for e in events] == ["done"]
    assert events[0]["data"]["status"] == "succeeded"

    for job_id, key in ((job["id"], stack.other_key), (str(uuid.uuid4()), stack.key)):
        url = f"{stack.base_url}/v1/jobs/{job_id}"
        expected = httpx.get(url, headers=stack.headers(key))
        answered = httpx.get(f"{url}/events", headers=stack.headers(key))
        assert answered.status_code == expected.status_code == 404
        assert answered.json() == expected.json()
    unauthenticated = httpx.get(f"{stack.base_url}/v1/jobs/{job['id']}/events")
    assert unauthenticated.status_code == 401, unauthenticated.text


def test_prefer_wait_returns_when_the_job_finishes(stack: Stack) -> None:
    job = stack.submit()
    started = time.monotonic()
    response = httpx.get(
        f"{stack.base_url}/v1/jobs/{job['id']}",
        headers=stack.headers(Prefer="wait=10"),
        timeout=30.0,
    )
    waited = time.monotonic() - started
    # Unless the worker is very slow, the job finishes within the wait; either way the
    # answer comes as soon as it finishes, not at the end of the wait.
    assert response.status_code == 200
    assert response.headers["preference-applied"] == "wait=10"
    if response.json()["status"] == "succeeded":
        assert waited < 9.5, waited
        finished = response.json()["finished_at"]
        assert finished is not None
    else:
        assert waited >= 9.5, waited


def test_prefer_wait_on_a_queued_job_and_200_streams_hold_no_thread(stack: Stack) -> None:
    busy = stack.submit(ENDLESS)  # keeps the one worker busy: the next job stays queued
    queued = stack.submit(ENDLESS)
    sockets: list[socket.socket] = []
    try:
        started = time.monotonic()
        response = httpx.get(
            f"{stack.base_url}/v1/jobs/{queued['id']}",
            headers=stack.headers(Prefer="wait=1"),
            timeout=10.0,
        )
        waited = time.monotonic() - started
        assert response.status_code == 200
        assert response.json()["status"] == "queued"
        assert response.headers["preference-applied"] == "wait=1"
        assert 0.9 < waited < 3.0, waited

        for malformed in ("wait=soon", "wait=-3", "wait"):
            started = time.monotonic()
            plain = httpx.get(
                f"{stack.base_url}/v1/jobs/{queued['id']}",
                headers=stack.headers(Prefer=malformed),
            )
            assert plain.status_code == 200 and "preference-applied" not in plain.headers
            assert time.monotonic() - started < 0.9, malformed

        port = int(stack.base_url.rsplit(":", 1)[1])
        head = (
            f"GET /v1/jobs/{queued['id']}/events HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {stack.key}\r\n\r\n"
        ).encode()
        for _ in range(200):
            held = socket.create_connection(("127.0.0.1", port), timeout=10.0)
            held.sendall(head)
            sockets.append(held)
        for held in sockets:  # every one is open: its status line and first event came
            assert held.recv(65536).startswith(b"HTTP/1.1 200"), "a stream was not answered"
        # Held waits too (each a connection, no thread), while polls go on.
        with httpx.Client(timeout=10.0) as client:
            slowest = 0.0
            for _ in range(40):
                started = time.monotonic()
                poll = client.get(
                    f"{stack.base_url}/v1/jobs/{queued['id']}", headers=stack.headers()
                )
                slowest = max(slowest, time.monotonic() - started)
                assert poll.status_code == 200
        assert slowest < 1.0, f"a poll took {slowest:.2f} s with 200 streams open"
    finally:
        for held in sockets:
            held.close()
        stack.cancel(queued["id"])
        stack.cancel(busy["id"])


def test_prefer_wait_on_submit_and_a_long_wait_is_cut_to_60(stack: Stack) -> None:
    started = time.monotonic()
    response = httpx.post(
        f"{stack.base_url}/v1/jobs",
        headers=stack.headers(Prefer="wait=30"),
        files={"content": stack.files["content"], "style": stack.files["style"]},
        data={"params": QUICK, "cache": "false"},
        timeout=60.0,
    )
    assert response.status_code == 202, response.text
    assert response.headers["preference-applied"] == "wait=30"
    assert response.headers["location"] == f"/v1/jobs/{response.json()['id']}"
    assert response.json()["status"] == "succeeded", (time.monotonic() - started, response.text)
    again = httpx.get(
        f"{stack.base_url}/v1/jobs/{response.json()['id']}",
        headers=stack.headers(Prefer="respond-async, wait=600"),
    )
    assert again.headers["preference-applied"] == "wait=60"


def test_a_change_nobody_announced_still_reaches_the_stream(stack: Stack) -> None:
    """A change whose hint was lost (made here, in a process that publishes none) comes
    with the API's next sweep of the watched jobs, a few seconds later."""
    busy = stack.submit(ENDLESS)  # keeps the one worker busy: the next job stays queued
    queued = stack.submit(ENDLESS)
    db = Database(stack.database_url)
    try:
        with stream(stack, queued["id"]) as response:
            lines = response.iter_lines()
            first = read_events(lines, until=lambda e: e["event"] == "status")
            assert first[-1]["data"]["status"] == "queued", first
            with db.session() as session:
                jobs.cancel_job(session, uuid.UUID(queued["id"]), client_id=None)
            canceled_at = time.monotonic()
            rest = read_events(lines)
        took = time.monotonic() - canceled_at
        assert [e["event"] for e in rest] == ["done"], rest
        assert rest[0]["data"]["status"] == "canceled"
        assert took < FALLBACK_SECONDS + 3.0, took
    finally:
        db.dispose()
        stack.cancel(busy["id"])


def test_a_queued_jobs_stream_tells_its_place_as_it_moves_up(stack: Stack) -> None:
    busy = stack.submit(ENDLESS)  # keeps the one worker busy: the jobs behind it stay queued
    deadline = time.monotonic() + STREAM_SECONDS
    while stack.get(busy["id"])["status"] != "running":
        assert time.monotonic() < deadline, "the worker never took the busy job"
        time.sleep(0.05)
    ahead = stack.submit(ENDLESS)
    mine = stack.submit(ENDLESS)
    try:
        with stream(stack, mine["id"]) as response:
            lines = response.iter_lines()
            first = read_events(lines, until=lambda e: e["event"] == "status")
            assert first[-1]["data"]["status"] == "queued", first
            place = first[-1]["data"]["queue"]
            if place["position"] is None:  # a snapshot older than the job: the next look has it
                place = read_events(lines, until=lambda e: e["event"] == "queue")[-1]["data"]
            assert place["position"] == 2 and place["live_workers"] >= 1, place
            stack.cancel(ahead["id"])  # announced for that job only: this stream looks again
            moved = read_events(lines, until=lambda e: e["event"] == "queue")
        assert moved[-1]["data"]["position"] == 1, moved
        result = CliRunner().invoke(
            cli,
            ["status", mine["id"]],
            obj=ClientConfig(lambda: StylequeueClient(stack.base_url, stack.key)),
        )
        assert result.exit_code == 0, result.stderr
        assert "queue     position 1 " in result.stdout, result.stdout
    finally:
        for job in (mine, ahead, busy):
            stack.cancel(job["id"])


class RecordingTransport(httpx.HTTPTransport):
    """httpx's own transport, noting each request's method and path."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(f"{request.method} {request.url.path}")
        return super().handle_request(request)


def test_the_clients_wait_and_submit_wait_follow_the_stream(stack: Stack, tmp_path: Path) -> None:
    params = json.loads(QUICK)
    transport = RecordingTransport()
    seen: list[Job] = []
    with StylequeueClient(stack.base_url, stack.key, transport=transport) as sq:
        job = sq.submit(stack.files["content"], [stack.files["style"]], params, cache=False)
        final = sq.wait(job.id, timeout=120, on_progress=seen.append)
        assert final.status is JobStatus.SUCCEEDED, final.error
        assert JobStatus.RUNNING in [j.status for j in seen]
        percents = [j.progress.percent for j in seen]
        assert percents == sorted(percents) and percents[-1] == 100.0
        # One stream, no polls.
        assert transport.requests == ["POST /v1/jobs", f"GET /v1/jobs/{job.id}/events"]
        names = [event.name for event in sq.events(job.id)]
        assert names == ["done"]

    cli_transport = RecordingTransport()
    out = tmp_path / "styled.png"
    content, style = tmp_path / "content.png", tmp_path / "style.png"
    content.write_bytes(stack.files["content"])
    style.write_bytes(stack.files["style"])
    args = [item for k, v in params.items() for item in ("-p", f"{k}={v}")]
    result = CliRunner().invoke(
        cli,
        ["submit", str(content), str(style), *args, "--no-cache", "--wait", "-o", str(out)],
        obj=ClientConfig(
            lambda: StylequeueClient(stack.base_url, stack.key, transport=cli_transport)
        ),
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == str(out) and out.stat().st_size > 0
    events = [r for r in cli_transport.requests if r.endswith("/events")]
    polls = [r for r in cli_transport.requests if r.startswith("GET") and r.count("/") == 3]
    assert len(events) == 1 and not polls, cli_transport.requests


def test_the_api_logs_no_errors(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> None:
    logs = list(Path(tmp_path_factory.getbasetemp()).glob("live*/api.log"))
    assert logs
    text = logs[0].read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]
