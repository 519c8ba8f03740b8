"""Fixtures for the client tests: a job's JSON as the API of DESIGN.md shapes it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

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
        "worker": "celery@box",
        "error": None,
        "created_at": "2026-11-27T22:00:00+00:00",
        "started_at": "2026-11-27T22:00:01.250000+00:00",
        "finished_at": None,
        "queue_seconds": 1.25,
        "run_seconds": None,
        "urls": {
            "self": f"/v1/jobs/{job_id}",
            "result": f"/v1/jobs/{job_id}/result",
            "preview": f"/v1/jobs/{job_id}/preview",
            "cancel": f"/v1/jobs/{job_id}/cancel",
        },
    }
    data.update(overrides)
    return data


@pytest.fixture
def job_json() -> JobJsonFactory:
    return make_job_json
