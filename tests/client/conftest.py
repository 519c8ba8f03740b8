"""Fixtures for the client tests.

Pure tests use ``job_json`` (a job as the API shapes it). API tests
talk to the real app (``app`` of tests/conftest.py: real PostgreSQL or SQLite
and Redis) through ``httpx.WSGITransport``; ``driver`` moves a job through its
states with shared.jobs, as a worker would, where a test needs it to progress.
Command-line tests run the real ``stylequeue`` program (``stylequeue_cli``)
against a real ``stylequeue api`` (``api_server``) on the same database.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from client_job_driver import JobDriver
from flask import Flask
from PIL import Image
from processes import free_port
from service.api_process import ApiProcess

from client import StylequeueClient
from shared.settings import Settings

STYLEQUEUE = str(Path(sys.executable).with_name("stylequeue"))
CLI_TIMEOUT_S = 60.0  # one command; the machine may be busy

JobJsonFactory = Callable[..., dict[str, Any]]


def make_job_json(**overrides: Any) -> dict[str, Any]:
    """A running job's JSON; keyword arguments replace top-level fields."""
    job_id = overrides.get("id", "0b8f7c1e-5d36-4a8e-9a55-3a0c4f3e2d11")
    data: dict[str, Any] = {
        "id": job_id,
        "status": "running",
        "params": {"size": 64, "iterations": 200, "optimizer": "lbfgs"},
        "progress": {"iteration": 50, "iterations": 200, "percent": 25.0, "eta_seconds": 12.4},
        "attempts": 1,
        "cached": False,
        "worker": "celery@box",
        "error": None,
        "created_at": "2026-11-27T22:00:00+00:00",
        "started_at": "2026-11-27T22:00:01.250000+00:00",
        "finished_at": None,
        "deadline_at": None,
        "queue_seconds": 1.25,
        "run_seconds": None,
        "urls": {
            "self": f"/v1/jobs/{job_id}",
            "result": f"/v1/jobs/{job_id}/result",
            "preview": f"/v1/jobs/{job_id}/preview",
            "cancel": f"/v1/jobs/{job_id}/cancel",
        },
        "warnings": [],
        "memory": {
            "estimate_bytes": None,
            "fits_no_worker": False,
            "largest_worker_budget_bytes": None,
        },
        "shared": False,
        "priority": 0,
        "queue": None,
    }
    data.update(overrides)
    return data


@pytest.fixture
def job_json() -> JobJsonFactory:
    return make_job_json


# -- the client against the real API app (fixtures of tests/conftest.py) -----------------

MakeClient = Callable[..., StylequeueClient]
BASE_URL = "http://stylequeue.test"


@pytest.fixture
def make_client(app: Flask) -> Iterator[MakeClient]:
    """Makes StylequeueClients that talk to the real app in-process, each with a given key."""
    made: list[StylequeueClient] = []

    def make(api_key: str) -> StylequeueClient:
        client = StylequeueClient(BASE_URL, api_key, transport=httpx.WSGITransport(app=app))
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def sq(make_client: MakeClient, api_key: str) -> StylequeueClient:
    return make_client(api_key)


@pytest.fixture
def png() -> Callable[[int, int], bytes]:
    """A real PNG of the given size (what a worker would store as the result)."""

    def make(width: int, height: int) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", (width, height), (200, 30, 90)).save(buffer, format="PNG")
        return buffer.getvalue()

    return make


@pytest.fixture
def driver(app: Flask) -> JobDriver:
    return JobDriver(app)


# -- the real `stylequeue` command against a real `stylequeue api` ----------------------


@pytest.fixture(scope="session")
def api_server(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``stylequeue api`` (gunicorn) on the app's database, files and key space; its URL."""
    env = {
        "STYLEQUEUE_DATABASE_URL": settings.database_url,
        "STYLEQUEUE_REDIS_URL": settings.redis_url,
        "STYLEQUEUE_REDIS_PREFIX": settings.redis_prefix,
        "STYLEQUEUE_DATA_DIR": str(settings.data_dir),
        "STYLEQUEUE_MAX_UPLOAD_BYTES": str(settings.max_upload_bytes),
        "STYLEQUEUE_MAX_IMAGE_PIXELS": str(settings.max_image_pixels),
    }
    api = ApiProcess(env, free_port(), tmp_path_factory.mktemp("api") / "api.log")
    api.start()
    try:
        api.wait_ready()
        yield api.base_url
    finally:
        api.stop()


StylequeueCli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def stylequeue_cli(api_server: str, api_key: str) -> StylequeueCli:
    """Runs ``stylequeue ARGS...`` as a program, with STYLEQUEUE_URL and _API_KEY set."""

    def run(*args: str, key: str = api_key) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "STYLEQUEUE_URL": api_server, "STYLEQUEUE_API_KEY": key}
        return subprocess.run(
            [STYLEQUEUE, *args], env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S
        )

    return run
