"""In-flight sharing through the real API (the app on the session's database and Redis)
and the session's real Celery worker (one pool process), on PostgreSQL and on SQLite.

An identical job submitted while the first is queued or running follows it: one engine
run (one ``claimed`` event in all), both succeed with the same result bytes; a
``cache=false`` job is computed on its own. Canceling the follower leaves the leader
running; canceling the leader, queued or running, leaves the follower to run the
computation (from where the running leader stopped).

The worker has one pool process: a long "blocker" job submitted first keeps the jobs
behind it queued until the test cancels it, so that each test decides when they run.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from api.services import EXTENSION_KEY
from shared.auth import create_client
from shared.db import Database
from shared.models import JobEvent

pytestmark = pytest.mark.slow

DATA = Path(__file__).parent.parent / "data"
CONTENT = (DATA / "tubingen.png").read_bytes()
STYLE = (DATA / "starry_night.png").read_bytes()
JOB_SECONDS = 120.0
FINAL = ("succeeded", "failed", "canceled")


class Api:
    """The real API app, one client's key, and the database the worker shares."""

    def __init__(self, worker_stack: Any) -> None:
        self.http: FlaskClient = worker_stack.app.test_client()
        self.db: Database = worker_stack.app.extensions[EXTENSION_KEY].db
        with self.db.session() as session:
            _, key = create_client(session, f"follows-{uuid.uuid4().hex[:6]}")
        self.auth = {"Authorization": f"Bearer {key}"}

    def submit(self, params: dict[str, Any], **fields: str) -> dict[str, Any]:
        response = self.http.post(
            "/v1/jobs",
            data={
                "content": (io.BytesIO(CONTENT), "content.png"),
                "style": (io.BytesIO(STYLE), "style.png"),
                "params": json.dumps(params),
                **fields,
            },
            headers=self.auth,
        )
        assert response.status_code == 202, response.json
        job: dict[str, Any] = response.json
        return job

    def get(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = self.http.get(f"/v1/jobs/{job_id}", headers=self.auth).json
        return job

    def cancel(self, job_id: str) -> dict[str, Any]:
        response = self.http.post(f"/v1/jobs/{job_id}/cancel", headers=self.auth)
        assert response.status_code == 200, response.json
        job: dict[str, Any] = response.json
        return job

    def until(self, job_id: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        deadline = time.monotonic() + JOB_SECONDS
        job = self.get(job_id)
        while not done(job):
            if time.monotonic() > deadline:
                pytest.fail(f"job {job_id} did not get there in {JOB_SECONDS:g} s: {job}")
            time.sleep(0.05)
            job = self.get(job_id)
        return job

    def finished(self, job_id: str) -> dict[str, Any]:
        return self.until(job_id, lambda job: job["status"] in FINAL)

    def result(self, job_id: str) -> bytes:
        response = self.http.get(f"/v1/jobs/{job_id}/result", headers=self.auth)
        assert response.status_code == 200, response.json
        return response.data

    def events(self, job_id: str) -> list[tuple[str, dict[str, Any]]]:
        with self.db.session() as session:
            rows = session.scalars(
                select(JobEvent)
                .where(JobEvent.job_id == uuid.UUID(job_id))
                .order_by(JobEvent.at, JobEvent.id)
            )
            return [(row.kind, dict(row.data or {})) for row in rows]

    def kinds(self, job_id: str) -> list[str]:
        return [kind for kind, _ in self.events(job_id)]

    def blocker(self) -> dict[str, Any]:
        """A long job, running: the worker's one pool process is busy until it is canceled."""
        job = self.submit(params(uuid.uuid4().int % 10_000 + 50_000, iterations=5000))
        return self.until(job["id"], lambda j: j["status"] == "running")


@pytest.fixture
def api(worker_stack: Any) -> Api:
    return Api(worker_stack)


def params(seed: int, *, iterations: int = 6) -> dict[str, Any]:
    # A seed of each test's own: no test's jobs are identical to another's.
    return {"size": 32, "iterations": iterations, "scales": 1, "seed": seed}


def test_an_identical_job_shares_the_run_and_a_cache_false_one_computes_its_own(
    api: Api,
) -> None:
    seed = uuid.uuid4().int % 10_000
    blocker = api.blocker()
    leader = api.submit(params(seed))
    follower = api.submit(params(seed))
    own = api.submit(params(seed), cache="false")
    assert leader["shared"] is False and own["shared"] is False
    assert follower["status"] == "queued" and follower["shared"] is True, follower
    api.cancel(blocker["id"])

    done = {job["id"]: api.finished(job["id"]) for job in (leader, follower, own)}
    assert all(job["status"] == "succeeded" for job in done.values()), done
    assert done[follower["id"]]["attempts"] == 0 and done[follower["id"]]["shared"] is True
    assert done[follower["id"]]["progress"]["percent"] == 100.0
    claims = {job_id: api.kinds(job_id).count("claimed") for job_id in done}
    assert claims == {leader["id"]: 1, follower["id"]: 0, own["id"]: 1}, "one run, shared"
    assert api.result(follower["id"]) == api.result(leader["id"])
    assert ("following", {"leader": leader["id"]}) in api.events(follower["id"])
    assert ("followed_by", {"follower": follower["id"]}) in api.events(leader["id"])
    assert ("succeeded", {"shared_from": leader["id"]}) in api.events(follower["id"])


def test_canceling_the_running_follower_leaves_the_leader_running_to_its_success(
    api: Api,
) -> None:
    seed = uuid.uuid4().int % 10_000
    blocker = api.blocker()
    leader = api.submit(params(seed, iterations=10))
    follower = api.submit(params(seed, iterations=10))
    api.cancel(blocker["id"])
    # The follower shows its leader's run: running, with its progress.
    api.until(follower["id"], lambda job: job["status"] == "running")
    canceled = api.cancel(follower["id"])
    assert canceled["status"] == "canceled", canceled

    assert api.finished(leader["id"])["status"] == "succeeded"
    assert api.get(follower["id"])["status"] == "canceled"
    assert "cancel_requested" not in api.kinds(leader["id"])


def test_canceling_the_queued_leader_leaves_the_follower_to_run_it(api: Api) -> None:
    seed = uuid.uuid4().int % 10_000
    blocker = api.blocker()
    leader = api.submit(params(seed))
    follower = api.submit(params(seed))
    assert api.cancel(leader["id"])["status"] == "canceled"
    assert api.get(follower["id"])["shared"] is False, "it runs its own computation now"
    api.cancel(blocker["id"])

    done = api.finished(follower["id"])
    assert done["status"] == "succeeded" and done["attempts"] == 1, done
    assert "promoted" in api.kinds(follower["id"])
    assert api.kinds(leader["id"]).count("claimed") == 0
    assert api.get(leader["id"])["status"] == "canceled"


def test_canceling_the_running_leader_leaves_the_follower_to_resume_where_it_stopped(
    api: Api,
) -> None:
    seed = uuid.uuid4().int % 10_000
    # Long enough that the cancel (learned at a heartbeat) comes before its end on a quiet
    # machine (a 32 px iteration there is a few ms), short enough that the rest is soon
    # run on a loaded one.
    leader = api.submit(params(seed, iterations=600))
    follower = api.submit(params(seed, iterations=600))
    assert follower["shared"] is True, follower
    api.until(leader["id"], lambda job: job["progress"]["iteration"] >= 1)
    api.cancel(leader["id"])

    assert api.finished(leader["id"])["status"] == "canceled"
    done = api.finished(follower["id"])
    assert done["status"] == "succeeded" and done["attempts"] == 1, done
    promoted = dict(api.events(follower["id"]))["promoted"]
    assert promoted["after"] == leader["id"] and promoted["iteration"] >= 1, promoted
    kinds = api.kinds(follower["id"])
    assert kinds.index("promoted") < kinds.index("claimed") < kinds.index("resumed"), kinds
