"""The poll's own per-thread PostgreSQL connections: they survive a dropped connection,
never serve another client's job, and say 503 when the database is gone."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient

from api.services import EXTENSION_KEY
from shared.db import Database
from shared.errors import ServiceUnavailableError


@pytest.fixture
def postgres_app(app: Flask) -> Flask:
    if app.extensions[EXTENSION_KEY].db.thread_connections is None:
        pytest.skip("the per-thread connections are PostgreSQL's path; SQLite reads through Core")
    return app


def _backend_pid(db: Database) -> int:
    connections = db.thread_connections
    assert connections is not None
    row = connections.fetch_one("SELECT pg_backend_pid()", ())
    assert row is not None
    pid: int = row[0]
    return pid


def test_a_poll_after_the_connection_was_killed_still_answers(
    postgres_app: Flask, http: FlaskClient, submit: Callable[..., Any], auth: dict[str, str]
) -> None:
    job_url = submit().headers["Location"]
    assert http.get(job_url, headers=auth).status_code == 200
    db: Database = postgres_app.extensions[EXTENSION_KEY].db
    pid = _backend_pid(db)  # the test client runs requests on this thread: the same connection
    with psycopg.connect(db.engine.url.set(drivername="postgresql").render_as_string(False)) as c:
        c.execute("SELECT pg_terminate_backend(%s)", (pid,))
    polled = http.get(job_url, headers=auth)
    assert polled.status_code == 200, polled.json
    assert polled.json["status"] == "queued"
    assert _backend_pid(db) != pid


def test_each_thread_has_its_own_connection(postgres_app: Flask) -> None:
    db: Database = postgres_app.extensions[EXTENSION_KEY].db
    pids: list[int] = []
    thread = threading.Thread(target=lambda: pids.append(_backend_pid(db)))
    thread.start()
    thread.join()
    assert pids and pids[0] != _backend_pid(db)


def test_another_clients_job_and_an_unknown_id_are_404(
    postgres_app: Flask, http: FlaskClient, submit: Callable[..., Any], make_api_key: Any
) -> None:
    job_url = submit().headers["Location"]
    stranger = {"Authorization": f"Bearer {make_api_key('stranger')}"}
    for url in (job_url, f"/v1/jobs/{uuid.uuid4()}"):
        response = http.get(url, headers=stranger)
        assert response.status_code == 404
        assert response.json["error"]["code"] == "job_not_found"


def test_unreachable_database_is_service_unavailable() -> None:
    db = Database("postgresql://nobody@127.0.0.1:1/none")
    assert db.thread_connections is not None
    with pytest.raises(ServiceUnavailableError, match="cannot be reached"):
        db.thread_connections.fetch_one("SELECT 1", ())
    db.dispose()
