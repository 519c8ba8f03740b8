"""The fixture chain for the service tests, on the real services.

    run_id ─┬─ postgresql_url (a fresh database sq_test_<run>, migrated; dropped at the end)
            ├─ sqlite_url     (a fresh file, migrated)
            ├─ redis_url      (every key under sq_test_<run>: deleted at the end)
            └─ database_url   (parametrised: each API test runs on both backends)
                 └─ settings ── app ── http (a Flask test client)
                                  └─ make_api_key / api_key / auth
    worker_stack: a real `celery worker` subprocess, once per session and backend.

A service that is not reachable skips the tests that need it, except under
CI=true, where it fails them: CI must never pass by skipping.
"""

from __future__ import annotations

import getpass
import os
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from processes import required, stop_process_group

from api import create_app
from api.services import EXTENSION_KEY
from cli.server_cmds import worker_argv
from shared.auth import create_client
from shared.settings import Settings

POSTGRES_ADMIN_URL = os.environ.get(
    "STYLEQUEUE_TEST_POSTGRES_URL", f"postgresql://{getpass.getuser()}@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("STYLEQUEUE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
DATA = Path(__file__).parent / "data"

MakeApiKey = Callable[..., str]

# The API and worker processes the tests start (with this environment under their own
# variables) have no per-client limits unless a test sets them: most submit many jobs,
# fast, with one key, and a 429 there would test nothing they are about.
for _limit in ("STYLEQUEUE_RATE_LIMIT", "STYLEQUEUE_MAX_QUEUED", "STYLEQUEUE_MAX_RUNNING"):
    os.environ.setdefault(_limit, "0")


def service_unavailable(what: str, exc: BaseException) -> None:
    required(f"{what} is not reachable ({exc.__class__.__name__}: {exc})")


@pytest.fixture(scope="session")
def run_id() -> str:
    return secrets.token_hex(4)


@pytest.fixture(scope="session")
def redis_prefix(run_id: str) -> str:
    return f"sq_test_{run_id}:"


@pytest.fixture(scope="session")
def redis_url(redis_prefix: str) -> Iterator[str]:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        service_unavailable("Redis", exc)
    yield REDIS_URL
    keys = list(client.scan_iter(match=f"{redis_prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="session")
def postgresql_url(run_id: str) -> Iterator[str]:
    import psycopg

    import migrations

    name = f"sq_test_{run_id}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        service_unavailable("PostgreSQL", exc)
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    url = f"{base}/{name}"
    try:
        migrations.upgrade(url)
        yield url
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    import migrations

    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'stylequeue.sqlite3'}"
    migrations.upgrade(url)
    return url


@pytest.fixture(scope="session", params=["postgresql", "sqlite"])
def database_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


def service_env(
    *, database_url: str, redis_url: str, redis_prefix: str, data_dir: Path
) -> dict[str, str]:
    """STYLEQUEUE_* variables for a test process: short intervals so tests see things happen."""
    return {
        "STYLEQUEUE_DATABASE_URL": database_url,
        "STYLEQUEUE_REDIS_URL": redis_url,
        "STYLEQUEUE_REDIS_PREFIX": redis_prefix,
        "STYLEQUEUE_DATA_DIR": str(data_dir),
        "STYLEQUEUE_DEVICE": "cpu",
        "STYLEQUEUE_MAX_UPLOAD_BYTES": str(256 * 1024),
        "STYLEQUEUE_MAX_IMAGE_PIXELS": str(1_000_000),
        "STYLEQUEUE_HEARTBEAT_SECONDS": "0.2",
        "STYLEQUEUE_PREVIEW_SECONDS": "0.5",
        "STYLEQUEUE_CHECKPOINT_SECONDS": "2",
        "STYLEQUEUE_LEASE_SECONDS": "30",
        # No per-client limits unless a test sets them: most submit many jobs with one key.
        "STYLEQUEUE_RATE_LIMIT": "0",
        "STYLEQUEUE_MAX_QUEUED": "0",
        "STYLEQUEUE_MAX_RUNNING": "0",
    }


@pytest.fixture(scope="session")
def settings(
    database_url: str,
    redis_url: str,
    redis_prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Settings:
    # The API tests' own key space: no worker listens there, so their jobs stay queued.
    env = service_env(
        database_url=database_url,
        redis_url=redis_url,
        redis_prefix=f"{redis_prefix}api:",
        data_dir=tmp_path_factory.mktemp("data"),
    )
    return Settings.from_env(env)


@pytest.fixture(scope="session")
def app(settings: Settings) -> Iterator[Flask]:
    flask_app = create_app(settings)
    flask_app.config["TESTING"] = True
    yield flask_app
    flask_app.extensions[EXTENSION_KEY].db.dispose()


@pytest.fixture
def http(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def make_api_key(app: Flask) -> MakeApiKey:
    """Create a fresh API client in the app's database; returns its key."""

    def make(name: str = "test", *, is_admin: bool = False) -> str:
        with app.extensions[EXTENSION_KEY].db.session() as session:
            _, key = create_client(session, f"{name}-{secrets.token_hex(3)}", is_admin=is_admin)
        return key

    return make


@pytest.fixture
def api_key(make_api_key: MakeApiKey) -> str:
    return make_api_key()


@pytest.fixture
def auth(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


WORKER_READY_TIMEOUT_SECONDS = 90.0  # a cold start loads VGG19 from disk on a busy CPU
WORKER_READY_MARKERS = ("ready.", "loaded caffe VGG19")  # the parent's and the child's


@dataclass(frozen=True)
class WorkerStack:
    """A running `celery worker` subprocess and an API app sharing its database and key space."""

    app: Flask
    settings: Settings
    log_path: Path


@pytest.fixture(scope="session", params=["postgresql", "sqlite"])
def worker_stack(
    request: pytest.FixtureRequest,
    redis_url: str,
    redis_prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[WorkerStack]:
    """A real Celery worker process (prefork, one child), once per session and backend."""
    backend = request.param
    env = service_env(
        database_url=request.getfixturevalue(f"{backend}_url"),
        redis_url=redis_url,
        redis_prefix=f"{redis_prefix}worker-{backend}:",
        data_dir=tmp_path_factory.mktemp("worker-data"),
    )
    settings = Settings.from_env(env)
    log_path = tmp_path_factory.mktemp("worker-log") / "worker.log"
    argv = worker_argv(hostname=f"test-{redis_prefix.strip(':')}-{backend}@%h", quiet=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).parent.parent,
            start_new_session=True,  # so the teardown can stop its child too
        )
    try:
        _wait_for_worker(process, log_path)
        flask_app = create_app(settings)
        flask_app.config["TESTING"] = True
        yield WorkerStack(flask_app, settings, log_path)
        flask_app.extensions[EXTENSION_KEY].db.dispose()
    finally:
        stop_process_group(process)


def _wait_for_worker(process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + WORKER_READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        if all(marker in text for marker in WORKER_READY_MARKERS):
            return
        if process.poll() is not None:
            pytest.fail(f"the Celery worker exited with {process.returncode}:\n{text[-3000:]}")
        time.sleep(0.2)
    pytest.fail(f"the Celery worker was not ready in time:\n{log_path.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def image_bytes() -> Callable[[str], bytes]:
    """The bytes of a sample image in tests/data, by name (e.g. 'tubingen')."""

    def read(name: str) -> bytes:
        return (DATA / f"{name}.png").read_bytes()

    return read
