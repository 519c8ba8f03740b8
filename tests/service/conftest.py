"""Fixtures for the service tests: a database session and storage for the state-machine
tests, and submitting a job the way a client does."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from api.services import EXTENSION_KEY
from shared.db import Database
from shared.models import Job, JobEvent
from shared.settings import Settings
from shared.storage import LocalStorage

# Small enough that a stray job could never hurt: the API tests have no worker anyway.
TINY_PARAMS = {"size": 32, "iterations": 2, "scales": 1}

Submit = Callable[..., TestResponse]


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """The run's database, on each backend (``database_url`` is parametrized)."""
    database = Database(database_url)
    yield database
    database.dispose()


@pytest.fixture
def session(db: Database) -> Iterator[Session]:
    with db.session() as s:
        yield s


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path)


@pytest.fixture
def submit(http: FlaskClient, auth: dict[str, str], image_bytes: Callable[[str], bytes]) -> Submit:
    """POST /v1/jobs with tubingen + starry_night and TINY_PARAMS unless told otherwise."""

    def post(
        *,
        content: bytes | None = None,
        styles: list[bytes] | None = None,
        params: dict[str, Any] | str | None = None,
        headers: dict[str, str] | None = None,
    ) -> TestResponse:
        data: dict[str, Any] = {
            "content": (io.BytesIO(content or image_bytes("tubingen")), "content.png"),
            "style": [
                (io.BytesIO(s), f"style{i}.png")
                for i, s in enumerate(styles or [image_bytes("starry_night")])
            ],
            "params": params if isinstance(params, str) else json.dumps(params or TINY_PARAMS),
        }
        return http.post(
            "/v1/jobs",
            data=data,
            headers={**auth, **(headers or {})},
            content_type="multipart/form-data",
        )

    return post


@pytest.fixture
def counts(app: Any, settings: Settings) -> Iterator[Callable[[], tuple[int, int, int, int]]]:
    """(jobs rows, job_events rows, job directories, messages waiting in the app's Redis key
    space): to prove a bad request wrote nothing and sent nothing to the workers."""
    broker = redis.Redis.from_url(settings.redis_url)

    def count() -> tuple[int, int, int, int]:
        db = app.extensions[EXTENSION_KEY].db
        with db.session() as session:
            jobs = session.query(Job).count()
            events = session.query(JobEvent).count()
        jobs_dir = settings.data_dir / "jobs"
        dirs = len(list(jobs_dir.iterdir())) if jobs_dir.is_dir() else 0
        # No worker listens there: every message the app sent is still in a list.
        lists = broker.scan_iter(match=f"{settings.redis_prefix}*", _type="list")
        messages = sum(int(broker.llen(key)) for key in lists)
        return jobs, events, dirs, messages

    yield count
    broker.close()
