"""The chaos test's clients: only HTTP, as a careful user would talk to the service.

A submitter sends the planned jobs one after another while the faults go on,
keeping a few unfinished, each with an Idempotency-Key, and retries one that got
no answer (or a 5xx) with the same key until it is accepted. A poller
lists the jobs, downloads a result as soon as its job succeeds, asks
``/result`` of each canceled job, sends the planned cancels, and notes any
finished job whose status changes afterwards. ``final_pass`` reads each job's
final state, its result again and its admin timeline.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from chaos_report import FINISHED, JobSeen
from PIL import Image

DATA = Path(__file__).resolve().parent.parent / "data"
REQUEST_SECONDS = 10.0
RETRY_SECONDS = 60.0  # a submit not accepted after this long counts as refused
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class PlannedJob:
    index: int
    content: str  # a sample image's name in tests/data
    style: str
    size: int
    iterations: int
    cancel_after: float | None  # seconds after its acceptance; None: never canceled

    def params(self) -> str:
        return json.dumps({"size": self.size, "iterations": self.iterations, "scales": 1})


class ChaosClient:
    """The client side of the test; its threads stop when ``stop`` is set."""

    def __init__(
        self, base_url: str, key: str, admin_key: str, seed: int, clock: Callable[[], float]
    ) -> None:
        self.base_url = base_url
        self.auth = {"Authorization": f"Bearer {key}"}
        self.admin_auth = {"Authorization": f"Bearer {admin_key}"}
        self.seed = seed
        self.clock = clock
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.jobs: dict[str, JobSeen] = {}  # by id, in acceptance order
        self.keys: dict[str, str] = {}  # Idempotency-Key -> the job id it was answered with
        self.cancel_due: dict[str, float] = {}  # job id -> when to cancel it (clock)
        self.refused: list[str] = []  # submits never accepted, with why
        self.server_errors: list[str] = []  # every 5xx answer: method path status
        self.other_keys: list[str] = []  # a retried key answered with another job id
        self.submitted_all = threading.Event()

    def _client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=REQUEST_SECONDS)

    def _server_error(self, method: str, path: str, response: httpx.Response) -> None:
        with self.lock:
            self.server_errors.append(
                f"{method} {path} {response.status_code} {response.text[:200]}"
            )

    # ------------------------------------------------------------ submitting

    def submit_all(self, plan: Iterable[PlannedJob], *, until: float, in_flight: int) -> None:
        """Submit the planned jobs in order until ``until`` (on the clock), keeping about
        ``in_flight`` of them unfinished: every worker busy, whatever the machine's speed."""
        try:
            with self._client() as http:
                for job in plan:
                    while len(self.unfinished()) >= in_flight and not self._over(until):
                        time.sleep(0.05)
                    if self._over(until):
                        return
                    self._submit(http, job)
        finally:
            self.submitted_all.set()

    def _over(self, until: float) -> bool:
        return self.stop.is_set() or self.clock() >= until

    def _submit(self, http: httpx.Client, job: PlannedJob) -> None:
        key = f"chaos-{self.seed}-{job.index}"
        content = (DATA / f"{job.content}.png").read_bytes()
        style = (DATA / f"{job.style}.png").read_bytes()
        deadline = time.monotonic() + RETRY_SECONDS
        why = "no try"
        while time.monotonic() < deadline and not self.stop.is_set():
            try:
                response = http.post(
                    "/v1/jobs",
                    files=[
                        ("content", ("content.png", io.BytesIO(content), "image/png")),
                        ("style", ("style.png", io.BytesIO(style), "image/png")),
                    ],
                    # Repeats of a job are computed again: the workers are what is tested.
                    data={"params": job.params(), "cache": "false"},
                    headers={**self.auth, "Idempotency-Key": key},
                )
            except httpx.TransportError as exc:
                why = f"{exc.__class__.__name__}: {exc}"
                time.sleep(0.2)
                continue
            if response.status_code >= 500:
                self._server_error("POST", "/v1/jobs", response)
                why = f"{response.status_code}"
                time.sleep(0.2)
                continue
            if response.status_code not in (200, 202):
                with self.lock:
                    self.refused.append(f"{key}: {response.status_code} {response.text[:300]}")
                return
            job_id = response.json()["id"]
            with self.lock:
                if key in self.keys and self.keys[key] != job_id:
                    self.other_keys.append(f"{key}: {self.keys[key]} then {job_id}")
                self.keys[key] = job_id
                if job_id not in self.jobs:
                    self.jobs[job_id] = JobSeen(job_id, status=response.json()["status"])
                    if job.cancel_after is not None:
                        self.cancel_due[job_id] = self.clock() + job.cancel_after
            return
        with self.lock:
            self.refused.append(f"{key}: not accepted in {RETRY_SECONDS:g} s (last: {why})")

    # ------------------------------------------------------------ polling

    def poll_until_stopped(self) -> None:
        with self._client() as http:
            while not self.stop.is_set():
                with contextlib.suppress(httpx.TransportError):
                    self.poll_once(http)
                self.stop.wait(POLL_SECONDS)

    def unfinished(self) -> list[str]:
        with self.lock:
            return [i for i, job in self.jobs.items() if job.status not in FINISHED]

    def poll_once(self, http: httpx.Client) -> None:
        statuses = self._list_statuses(http)
        for job_id, status in statuses.items():
            with self.lock:
                job = self.jobs.get(job_id)
            if job is None:
                continue
            self._saw(http, job, status)
        self._send_due_cancels(http)

    def _list_statuses(self, http: httpx.Client) -> dict[str, str]:
        statuses: dict[str, str] = {}
        cursor: str | None = None
        while True:
            params = {"limit": "100", **({"cursor": cursor} if cursor else {})}
            response = http.get("/v1/jobs", params=params, headers=self.auth)
            if response.status_code >= 500:
                self._server_error("GET", "/v1/jobs", response)
                return statuses
            if response.status_code != 200:
                return statuses
            body = response.json()
            statuses.update({j["id"]: j["status"] for j in body["jobs"]})
            cursor = body.get("next_cursor")
            if not cursor:
                return statuses

    def _saw(self, http: httpx.Client, job: JobSeen, status: str) -> None:
        before = job.status
        if before in FINISHED and status != before:
            job.status_changes_after_finish.append((before, status))
        if before in FINISHED:
            return
        job.status = status
        if status == "succeeded":
            job.first_result, job.result_problem = self.download(http, job.job_id)
            job.first_preview = self.preview(http, job.job_id)
        elif status == "canceled":
            job.canceled_result_status = self._result_status(http, job.job_id)

    def download(self, http: httpx.Client, job_id: str) -> tuple[str | None, str | None]:
        """(sha256 of /result, None) or (None, what was wrong with it)."""
        response = http.get(f"/v1/jobs/{job_id}/result", headers=self.auth)
        if response.status_code >= 500:
            self._server_error("GET", f"/v1/jobs/{job_id}/result", response)
        if response.status_code != 200:
            return None, f"/result answered {response.status_code} {response.text[:200]}"
        if response.headers.get("content-type") != "image/png":
            return None, f"/result is {response.headers.get('content-type')}"
        try:
            with Image.open(io.BytesIO(response.content)) as image:
                image.load()
                size = image.size
        except Exception as exc:
            return None, f"/result is no image ({exc.__class__.__name__}: {exc})"
        if max(size) == 0:
            return None, f"/result is {size[0]}x{size[1]}"
        return hashlib.sha256(response.content).hexdigest(), None

    def preview(self, http: httpx.Client, job_id: str) -> str:
        """sha256 of /preview; "none" when there is none (404), else what it answered."""
        response = http.get(f"/v1/jobs/{job_id}/preview", headers=self.auth)
        if response.status_code >= 500:
            self._server_error("GET", f"/v1/jobs/{job_id}/preview", response)
        if response.status_code == 404:
            return "none"
        if response.status_code != 200:
            return f"answered {response.status_code}"
        return hashlib.sha256(response.content).hexdigest()

    def _result_status(self, http: httpx.Client, job_id: str) -> int:
        response = http.get(f"/v1/jobs/{job_id}/result", headers=self.auth)
        if response.status_code >= 500:
            self._server_error("GET", f"/v1/jobs/{job_id}/result", response)
        return response.status_code

    def _send_due_cancels(self, http: httpx.Client) -> None:
        now = self.clock()
        with self.lock:
            due = [i for i, at in self.cancel_due.items() if at <= now]
        for job_id in due:
            response = http.post(f"/v1/jobs/{job_id}/cancel", headers=self.auth)
            if response.status_code >= 500:
                self._server_error("POST", f"/v1/jobs/{job_id}/cancel", response)
                continue
            with self.lock:
                del self.cancel_due[job_id]
                if response.status_code == 200:
                    self.jobs[job_id].canceled_by_us = True

    # ------------------------------------------------------------ the end

    def final_pass(self) -> list[JobSeen]:
        """Each job's final JSON, its result again (or /result of a canceled job) and its
        admin timeline, retrying requests that got no answer."""
        with self._client() as http:
            with self.lock:
                seen = list(self.jobs.values())
            for job in seen:
                final = self._get_json(http, f"/v1/jobs/{job.job_id}", self.auth)
                job.final = final
                self._saw(http, job, final["status"])
                if final["status"] == "succeeded" and job.result_problem is None:
                    job.final_result, job.result_problem = _retrying(
                        partial(self.download, http, job.job_id)
                    )
                    job.final_preview = _retrying(partial(self.preview, http, job.job_id))
                elif final["status"] == "canceled":
                    job.canceled_result_status = _retrying(
                        partial(self._result_status, http, job.job_id)
                    )
                detail = self._get_json(http, f"/v1/admin/jobs/{job.job_id}", self.admin_auth)
                job.events = detail["events"]
            return seen

    def _get_json(self, http: httpx.Client, path: str, headers: dict[str, str]) -> Any:
        def get() -> Any:
            response = http.get(path, headers=headers)
            if response.status_code >= 500:
                self._server_error("GET", path, response)
            assert response.status_code == 200, (
                f"GET {path}: {response.status_code} {response.text}"
            )
            return response.json()

        return _retrying(get)


def _retrying(call: Callable[[], Any], seconds: float = RETRY_SECONDS) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        try:
            return call()
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
