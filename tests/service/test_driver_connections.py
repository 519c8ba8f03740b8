"""The API's own per-thread PostgreSQL connections (poll and submit): they survive a
dropped connection, never serve another client's job, and say 503 when the database is gone."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.exc import IntegrityError

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
    _kill_backend(db)
    polled = http.get(job_url, headers=auth)
    assert polled.status_code == 200, polled.json
    assert polled.json["status"] == "queued"
    assert _backend_pid(db) != pid


def _kill_backend(db: Database) -> None:
    pid = _backend_pid(db)
    with psycopg.connect(db.engine.url.set(drivername="postgresql").render_as_string(False)) as c:
        c.execute("SELECT pg_terminate_backend(%s)", (pid,))


def test_a_submit_after_the_connection_was_killed_is_still_accepted(
    postgres_app: Flask, http: FlaskClient, submit: Callable[..., Any], auth: dict[str, str]
) -> None:
    submit()  # opens this thread's connection
    _kill_backend(postgres_app.extensions[EXTENSION_KEY].db)
    accepted = submit()
    assert accepted.status_code == 202, accepted.json
    assert http.get(accepted.headers["Location"], headers=auth).json["status"] == "queued"


def test_a_unique_violation_is_sqlalchemys_integrity_error_and_rolled_back(
    postgres_app: Flask,
) -> None:
    db: Database = postgres_app.extensions[EXTENSION_KEY].db
    connections = db.thread_connections
    assert connections is not None
    insert = "INSERT INTO api_clients (name, key_hash, is_admin, created_at) VALUES (%s, %s, false, now())"
    key_hash = uuid.uuid4().hex
    with pytest.raises(IntegrityError):
        connections.write([(insert, ("a", key_hash)), (insert, ("b", key_hash))])
    row = connections.fetch_one("SELECT count(*) FROM api_clients WHERE key_hash = %s", (key_hash,))
    assert row == (0,)  # the whole transaction, the first INSERT too, was rolled back


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
