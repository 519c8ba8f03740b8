"""Helpers for the per-client limit tests (imported, not fixtures): an API app with limits
of its own, in a Redis key space of its own, and what a submit left behind."""

from __future__ import annotations

import io
import itertools
import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
from flask import Flask
from sqlalchemy import func, select
from werkzeug.test import TestResponse

from api import create_app
from api.services import EXTENSION_KEY
from shared.auth import create_client
from shared.models import Job
from shared.settings import Settings

DATA = Path(__file__).parent.parent / "data"
TINY = {"size": 32, "iterations": 2, "scales": 1}


def limited_env(
    database_url: str, redis_url: str, prefix: str, data_dir: Path, **limits: str
) -> dict[str, str]:
    """STYLEQUEUE_* for an API or worker with these limits (RATE_LIMIT="0" and so on)."""
    env = {
        "STYLEQUEUE_DATABASE_URL": database_url,
        "STYLEQUEUE_REDIS_URL": redis_url,
        "STYLEQUEUE_REDIS_PREFIX": prefix,
        "STYLEQUEUE_DATA_DIR": str(data_dir),
        "STYLEQUEUE_DEVICE": "cpu",
        "STYLEQUEUE_MAX_UPLOAD_BYTES": str(256 * 1024),
        "STYLEQUEUE_HEARTBEAT_SECONDS": "0.2",
        "STYLEQUEUE_LEASE_SECONDS": "30",
        "STYLEQUEUE_RATE_LIMIT": "0",
        "STYLEQUEUE_MAX_QUEUED": "0",
        "STYLEQUEUE_MAX_RUNNING": "0",
    }
    env.update({f"STYLEQUEUE_{name.upper()}": value for name, value in limits.items()})
    return env


@contextmanager
def limited_app(env: dict[str, str]) -> Iterator[Flask]:
    app = create_app(Settings.from_env(env))
    app.config["TESTING"] = True
    try:
        yield app
    finally:
        app.extensions[EXTENSION_KEY].db.dispose()


def new_client(app: Flask, **limits: Any) -> tuple[int, dict[str, str]]:
    """A fresh client with these columns set (rate_limit=..., max_queued=...): id, auth header."""
    with app.extensions[EXTENSION_KEY].db.session() as session:
        client, key = create_client(session, f"limits-{secrets.token_hex(3)}")
        for column, value in limits.items():
            setattr(client, column, value)
        session.commit()
        return client.id, {"Authorization": f"Bearer {key}"}


_SEEDS = itertools.count(1)


def post_job(
    app: Flask, auth: dict[str, str], headers: dict[str, str] | None = None
) -> TestResponse:
    data: dict[str, Any] = {
        "content": (io.BytesIO((DATA / "tubingen.png").read_bytes()), "content.png"),
        "style": [(io.BytesIO((DATA / "starry_night.png").read_bytes()), "style.png")],
        # A seed of its own: no two are identical jobs (which would share one run).
        "params": json.dumps({**TINY, "seed": next(_SEEDS)}),
    }
    return app.test_client().post(
        "/v1/jobs",
        data=data,
        headers={**auth, **(headers or {})},
        content_type="multipart/form-data",
    )


def stored(app: Flask, client_id: int) -> tuple[int, int, int]:
    """(the client's job rows, job directories, messages waiting in the app's key space)."""
    svc = app.extensions[EXTENSION_KEY]
    with svc.db.session() as session:
        rows = session.scalar(select(func.count(Job.id)).where(Job.client_id == client_id))
    jobs_dir = svc.settings.data_dir / "jobs"
    dirs = len(list(jobs_dir.iterdir())) if jobs_dir.is_dir() else 0
    broker = redis.Redis.from_url(svc.settings.redis_url)
    try:
        lists = broker.scan_iter(match=f"{svc.settings.redis_prefix}*", _type="list")
        messages = sum(int(broker.llen(key)) for key in lists)
    finally:
        broker.close()
    return int(rows or 0), dirs, messages
