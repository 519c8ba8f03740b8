"""A queued job's place (shared.queue_position) on a real database, PostgreSQL and SQLite:
positions in the fair order the workers claim in, expected starts from the live workers
played forward with measured run times, a follower at its leader's place; and through
the API: the job JSON's queue object, the job list, /admin's job page."""

from __future__ import annotations

import io
import json
import secrets
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import update
from sqlalchemy.orm import Session

from shared import jobs, submissions
from shared.auth import create_client
from shared.models import Job, JobStatus, Worker, utcnow
from shared.params import parse_params
from shared.queue_position import QueueCache, count_live_workers, read_queue
from shared.storage import LocalStorage

SIZE = 37  # a size no other test's jobs have: the run times measured here are its own
ITERATIONS = 10


@pytest.fixture
def queue() -> str:
    return f"place-{secrets.token_hex(4)}:"


def new_client(session: Session, weight: float = 1.0) -> int:
    client, _ = create_client(session, f"place-{secrets.token_hex(3)}")
    client.weight = weight
    session.commit()
    return client.id


def new_job(
    session: Session, storage: LocalStorage, client_id: int, queue: str, *, seed: int = 0
) -> uuid.UUID:
    job, _ = submissions.create_job(
        session,
        storage,
        client_id=client_id,
        params=parse_params({"size": SIZE, "iterations": ITERATIONS, "seed": seed}),
        content=b"content",
        styles=[b"style"],
        idempotency_key=None,
        enqueue=lambda _job_id: None,
        queue_name=queue,
    )
    return job.id


def measured(session: Session, storage: LocalStorage, client_id: int, queue: str) -> None:
    """A job of SIZE that succeeded just now after 1 s per iteration."""
    job_id = new_job(session, storage, client_id, queue, seed=999)
    now = utcnow()
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(
            status=JobStatus.SUCCEEDED,
            started_at=now - timedelta(seconds=ITERATIONS),
            finished_at=now,
            iteration=ITERATIONS,
        )
    )
    session.commit()


def test_positions_follow_the_fair_order_and_starts_play_the_workers_forward(
    session: Session, storage: LocalStorage, queue: str
) -> None:
    a, b = new_client(session), new_client(session)
    measured(session, storage, a, queue)
    a_jobs = [new_job(session, storage, a, queue, seed=i) for i in range(3)]
    b_job = new_job(session, storage, b, queue, seed=10)
    # One worker is busy with another job of the key space for 4 more seconds.
    running = new_job(session, storage, b, queue, seed=20)
    claim = jobs.claim_job(session, running, worker="w/1", lease_seconds=30)
    assert claim is not None
    session.execute(update(Job).where(Job.id == running).values(eta_seconds=4.0))
    session.commit()

    snapshot = read_queue(session, queue_name=queue, live_workers=2)
    places = {job_id: snapshot.place_of(job_id) for job_id in [*a_jobs, b_job]}
    # A's first, then B's first (B's next virtual start is no later), then A's others.
    order = [a_jobs[0], b_job, a_jobs[1], a_jobs[2]]
    assert [places[j].position for j in order] == [1, 2, 3, 4]  # type: ignore[union-attr]
    # Workers free at 0 and 4 s; each job runs 10 iterations at the measured 1 s each.
    starts = [places[j].expected_start_seconds for j in order]  # type: ignore[union-attr]
    assert starts == pytest.approx([0.0, 4.0, 10.0, 14.0], abs=0.2)
    assert snapshot.place_of(running) is None, "running: not in the queue"

    shown = snapshot.queue_dict(b_job, None, snapshot.taken_at + timedelta(seconds=1))
    assert shown["position"] == 2 and shown["live_workers"] == 2
    assert shown["expected_start_seconds"] == pytest.approx(3.0, abs=0.2), "counted down"

    without = read_queue(session, queue_name=queue, live_workers=0)
    first = without.place_of(a_jobs[0])
    assert first is not None and first.position == 1 and first.expected_start_seconds is None


def test_a_follower_is_at_its_leaders_place_and_the_window_ends_positions(
    session: Session, storage: LocalStorage, queue: str
) -> None:
    a = new_client(session)
    ids = [new_job(session, storage, a, queue, seed=i) for i in range(3)]
    snapshot = read_queue(session, queue_name=queue, live_workers=1, window=2)
    assert snapshot.place_of(ids[2]) is None, "past the window: no position"
    place = snapshot.place_of(uuid.uuid4(), follows=ids[1])
    assert place is not None and place.position == 2


def test_live_workers_are_those_that_beat_lately(session: Session) -> None:
    now = utcnow()
    before = count_live_workers(session, now)
    for name, beat in (("fresh", now), ("stale", now - timedelta(minutes=5))):
        session.add(
            Worker(
                name=f"{name}-{secrets.token_hex(3)}/1",
                hostname="h",
                pid=1,
                device="cpu",
                started_at=beat,
                last_heartbeat_at=beat,
            )
        )
    session.commit()
    assert count_live_workers(session, now) == before + 1


def test_the_cache_reads_once_a_second_and_hands_out_the_old_one_meanwhile(
    session: Session, storage: LocalStorage, queue: str
) -> None:
    a = new_client(session)
    first = new_job(session, storage, a, queue)
    cache = QueueCache(seconds=60.0)
    snapshot = cache.get(session, queue_name=queue)
    second = new_job(session, storage, a, queue, seed=1)
    assert cache.get(session, queue_name=queue) is snapshot, "within its seconds: the same"
    assert snapshot.place_of(second) is None
    fresh = QueueCache(seconds=0.0).get(session, queue_name=queue)
    assert [fresh.place_of(j).position for j in (first, second)] == [1, 2]  # type: ignore[union-attr]


def _post(http: FlaskClient, key: str, images: Callable[[str], bytes], seed: int) -> str:
    response = http.post(
        "/v1/jobs",
        data={
            "content": (io.BytesIO(images("tubingen")), "content.png"),
            "style": [(io.BytesIO(images("starry_night")), "style.png")],
            "params": json.dumps({"size": 32, "iterations": 2, "scales": 1, "seed": seed}),
        },
        headers={"Authorization": f"Bearer {key}"},
        content_type="multipart/form-data",
    )
    assert response.status_code == 202, response.json
    assert response.json["queue"] is None, "the submit's answer stays cheap"
    job_id: str = response.json["id"]
    return job_id


def test_the_api_shows_a_queued_jobs_place_and_none_once_it_runs(
    app: Any,
    http: FlaskClient,
    make_api_key: Callable[..., str],
    image_bytes: Callable[[str], bytes],
    session: Session,
) -> None:
    key = make_api_key()
    first, second = (_post(http, key, image_bytes, seed) for seed in (501, 502))
    app.extensions["stylequeue"].queue.clear()
    auth = {"Authorization": f"Bearer {key}"}
    shown = http.get(f"/v1/jobs/{second}", headers=auth).json
    assert shown["status"] == "queued" and shown["priority"] == 0
    queue = shown["queue"]
    assert set(queue) == {"position", "expected_start_seconds", "expected_start_at", "live_workers"}
    listed = {j["id"]: j for j in http.get("/v1/jobs?status=queued", headers=auth).json["jobs"]}
    positions = {job_id: listed[job_id]["queue"]["position"] for job_id in (first, second)}
    assert None not in positions.values() and positions[first] < positions[second]

    claim = jobs.claim_job(session, uuid.UUID(first), worker="w/1", lease_seconds=30)
    assert claim is not None
    assert http.get(f"/v1/jobs/{first}", headers=auth).json["queue"] is None
