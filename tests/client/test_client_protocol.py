"""The client's side of the protocol, against a scripted server (httpx.MockTransport).

The real API is exercised in test_client_api.py; these cover what a real
server does not do on demand: fail a poll, never finish, break a download.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from client import (
    ConflictError,
    InvalidResponseError,
    Job,
    JobStatus,
    ServerError,
    StylequeueClient,
    TransportError,
    WaitTimeoutError,
)

JobJsonFactory = Callable[..., dict[str, Any]]
Handler = Callable[[httpx.Request], httpx.Response]


def _client(handler: Handler) -> StylequeueClient:
    return StylequeueClient("http://sq.test", "key-1", transport=httpx.MockTransport(handler))


def _scripted(responses: list[httpx.Response]) -> tuple[Handler, list[httpx.Request]]:
    """A handler that answers with ``responses`` in order and records the requests.

    It is a server from before event streams: a job's ``/events`` is a 404 (neither
    recorded nor answered from ``responses``), so ``wait`` polls it.
    """
    seen: list[httpx.Request] = []
    answers: Iterator[httpx.Response] = iter(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return httpx.Response(404, json={"error": {"code": "not_found", "message": "no"}})
        seen.append(request)
        return next(answers)

    return handler, seen


def test_submit_sends_the_files_params_key_and_idempotency_key(
    job_json: JobJsonFactory, tmp_path: Path
) -> None:
    style = tmp_path / "style.png"
    style.write_bytes(b"style-bytes")
    handler, seen = _scripted([httpx.Response(202, json=job_json(status="queued"))])
    with _client(handler) as client:
        job = client.submit(b"content-bytes", [style], {"size": 64}, idempotency_key="k-1")
    assert job.status is JobStatus.QUEUED
    request = seen[0]
    assert request.method == "POST" and request.url.path == "/v1/jobs"
    assert request.headers["Authorization"] == "Bearer key-1"
    assert request.headers["Idempotency-Key"] == "k-1"
    body = request.read()
    assert b'name="content"' in body and b"content-bytes" in body
    assert b'name="style"; filename="style.png"' in body and b"style-bytes" in body
    assert b'name="params"' in body and json.dumps({"size": 64}).encode() in body


def test_submit_refuses_one_image_where_a_list_of_styles_belongs() -> None:
    with _client(_scripted([])[0]) as client, pytest.raises(TypeError, match="sequence"):
        client.submit(b"c", b"s")  # type: ignore[arg-type]


def test_a_job_id_is_quoted_as_one_path_segment(job_json: JobJsonFactory) -> None:
    handler, seen = _scripted([httpx.Response(200, json=job_json())])
    with _client(handler) as client:
        client.get("../admin/jobs")
    assert seen[0].url.raw_path == b"/v1/jobs/..%2Fadmin%2Fjobs"


def test_a_success_that_is_not_json_is_an_invalid_response() -> None:
    handler, _ = _scripted([httpx.Response(200, text="<html>proxy</html>")])
    with _client(handler) as client, pytest.raises(InvalidResponseError, match="not JSON"):
        client.get("x")


def test_an_unreachable_server_is_a_transport_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with _client(refuse) as client, pytest.raises(TransportError, match="connection refused"):
        client.get("x")


def test_wait_reports_each_change_once_and_returns_the_final_job(
    job_json: JobJsonFactory,
) -> None:
    states = [
        job_json(status="queued", progress=None),
        job_json(status="queued", progress=None),
        job_json(),
        job_json(),
        job_json(
            status="succeeded", progress={"iteration": 200, "iterations": 200, "percent": 100.0}
        ),
    ]
    handler, seen = _scripted([httpx.Response(200, json=s) for s in states])
    reported: list[Job] = []
    with _client(handler) as client:
        job = client.wait("j", poll_interval=0.001, on_progress=reported.append)
    assert job.status is JobStatus.SUCCEEDED and len(seen) == 5
    assert [j.status.value for j in reported] == ["queued", "running", "succeeded"]


def test_wait_rides_out_a_few_failed_polls(job_json: JobJsonFactory) -> None:
    unavailable = {"error": {"code": "service_unavailable", "message": "db down"}}
    handler, _ = _scripted(
        [
            httpx.Response(200, json=job_json()),
            httpx.Response(503, json=unavailable),
            httpx.Response(503, json=unavailable),
            httpx.Response(200, json=job_json(status="canceled")),
        ]
    )
    with _client(handler) as client:
        assert client.wait("j", poll_interval=0.001).status is JobStatus.CANCELED


def test_wait_gives_up_after_too_many_failed_polls(job_json: JobJsonFactory) -> None:
    down = httpx.Response(503, json={"error": {"code": "service_unavailable", "message": "down"}})
    handler, seen = _scripted([httpx.Response(200, json=job_json())] + [down] * 10)
    with _client(handler) as client, pytest.raises(ServerError, match="service_unavailable"):
        client.wait("j", poll_interval=0.001)
    assert len(seen) == 1 + 4  # the first poll, then MAX_POLL_FAILURES + 1 failures


def test_wait_times_out_with_the_last_job(job_json: JobJsonFactory) -> None:
    def always_running(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=job_json())

    with _client(always_running) as client, pytest.raises(WaitTimeoutError) as info:
        client.wait("j", poll_interval=0.01, timeout=0.05)
    assert info.value.job.status is JobStatus.RUNNING
    assert "still running after waiting 0.05 s" in str(info.value)


def test_download_writes_the_file(tmp_path: Path) -> None:
    handler, _ = _scripted([httpx.Response(200, content=b"\x89PNG...")])
    with _client(handler) as client:
        saved = client.download("j", tmp_path / "out.png")
    assert saved.read_bytes() == b"\x89PNG..."
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_a_refused_download_leaves_no_file(tmp_path: Path) -> None:
    body = {"error": {"code": "job_not_finished", "message": "job is running", "details": {}}}
    handler, _ = _scripted([httpx.Response(409, json=body)])
    with _client(handler) as client, pytest.raises(ConflictError) as info:
        client.download("j", tmp_path / "out.png")
    assert info.value.code == "job_not_finished"
    assert list(tmp_path.iterdir()) == []


def test_a_download_cut_off_midway_leaves_no_file(tmp_path: Path) -> None:
    class Broken(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            yield b"\x89PNG partial"
            raise httpx.ReadError("connection reset")

    handler, _ = _scripted([httpx.Response(200, stream=Broken())])
    with _client(handler) as client, pytest.raises(TransportError, match="connection reset"):
        client.download("j", tmp_path / "out.png")
    assert list(tmp_path.iterdir()) == []
