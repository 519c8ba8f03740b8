"""A data dir that is full, read-only or gone: a submit is a 503 with Retry-After that stores nothing.

The real API (``stylequeue api``, gunicorn) keeps its job files on a 2 MiB tmpfs
mounted for the test (root only: ``mount -t tmpfs``; chmod stops no root
process, so a real filesystem is the only honest way to be full or read-only).
Filling it with a file makes writes fail with ENOSPC, remounting it read-only
with EROFS, and a file in place of the data dir is a volume gone. Each case answers 503 in the JSON error shape with its own code and a
Retry-After, leaves no row and no job directory, and a retry once the storage is
back is a 202.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import volumes
from api_process import ApiProcess
from processes import free_port
from sqlalchemy import func, select

from shared.auth import create_client
from shared.db import Database
from shared.errors import NotFoundError, StorageFullError, StorageUnavailableError
from shared.models import Job
from shared.storage import CONTENT_FILE, LocalStorage

TMPFS_BYTES = 2 * 1024 * 1024
PARAMS = '{"size": 32, "iterations": 2, "scales": 1}'
DATA = Path(__file__).parent.parent / "data"


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted at a fresh directory, unmounted afterwards."""
    with volumes.tmpfs(tmp_path / "volume", TMPFS_BYTES) as mount_point:
        yield mount_point


@dataclass
class Api:
    process: ApiProcess
    data_dir: Path
    db: Database
    client_id: int
    key: str

    def submit(self) -> httpx.Response:
        return httpx.post(
            f"{self.process.base_url}/v1/jobs",
            headers={"Authorization": f"Bearer {self.key}"},
            files={
                "content": ("content.png", (DATA / "tubingen.png").read_bytes()),
                "style": ("style.png", (DATA / "starry_night.png").read_bytes()),
            },
            # Computed, never a copy of an earlier job: the workers are what is tested.
            data={"params": PARAMS, "cache": "false"},
            timeout=30.0,
        )

    def rows(self) -> int:
        with self.db.session() as session:
            count: int = session.scalar(
                select(func.count()).select_from(Job).where(Job.client_id == self.client_id)
            )
            return count

    def job_dirs(self) -> list[str]:
        jobs = self.data_dir / "jobs"
        return sorted(p.name for p in jobs.iterdir()) if jobs.is_dir() else []


@pytest.fixture
def api(
    tmpfs: Path, tmp_path: Path, postgresql_url: str, redis_url: str, redis_prefix: str
) -> Iterator[Api]:
    """The real API with its data dir on the tmpfs (PostgreSQL: the database lives elsewhere)."""
    data_dir = tmpfs / "data"
    data_dir.mkdir()
    env = {
        "STYLEQUEUE_DATABASE_URL": postgresql_url,
        "STYLEQUEUE_REDIS_URL": redis_url,
        "STYLEQUEUE_REDIS_PREFIX": f"{redis_prefix}storage:",
        "STYLEQUEUE_DATA_DIR": str(data_dir),
    }
    process = ApiProcess(env, free_port(), tmp_path / "api.log")
    db = Database(postgresql_url)
    with db.session() as session:
        client, key = create_client(session, f"storage-{uuid.uuid4().hex[:6]}")
        client_id = client.id
    process.start()
    try:
        process.wait_ready()
        yield Api(process, data_dir, db, client_id, key)
    finally:
        process.stop()
        db.dispose()


def assert_503_that_stored_nothing(api: Api, response: httpx.Response, code: str) -> None:
    assert response.status_code == 503, response.text[:500]
    assert response.headers["content-type"].startswith("application/json")
    assert int(response.headers["Retry-After"]) > 0
    error = response.json()["error"]
    assert error["code"] == code, error
    assert error["message"].startswith("storage ")
    assert "Error" not in error["message"], "no Python exception names for a client"
    assert api.rows() == 0, "a submit that could not store its files must leave no row"
    assert api.job_dirs() == [], "and no half-written job directory"


@pytest.mark.slow
def test_full_storage_is_a_503_storage_full_then_a_retry_succeeds(api: Api, tmpfs: Path) -> None:
    filler = volumes.fill(tmpfs)
    response = api.submit()
    assert_503_that_stored_nothing(api, response, "storage_full")
    assert response.json()["error"]["details"]["errno"] in ("ENOSPC", "EDQUOT")
    assert "storage full" in api.process.log(), "the operator reads it in the API's log"

    filler.unlink()
    retry = api.submit()
    assert retry.status_code == 202, retry.text[:500]
    assert api.rows() == 1


@pytest.mark.slow
def test_read_only_storage_is_a_503_storage_unavailable(api: Api, tmpfs: Path) -> None:
    volumes.remount(tmpfs, "ro")
    try:
        response = api.submit()
        assert_503_that_stored_nothing(api, response, "storage_unavailable")
        assert response.json()["error"]["details"]["errno"] == "EROFS"
    finally:
        volumes.remount(tmpfs, "rw")
    assert api.submit().status_code == 202


@pytest.mark.slow
def test_a_data_dir_replaced_under_the_running_api_is_a_503_storage_unavailable(api: Api) -> None:
    # A file where the data dir was: what a gunicorn worker starting late cannot make
    # again either (a plain removal is covered in process, below).
    shutil.rmtree(api.data_dir)
    api.data_dir.write_text("not a directory")
    response = api.submit()
    assert response.status_code == 503, response.text[:500]
    assert response.json()["error"]["code"] == "storage_unavailable"
    assert "data dir" in response.json()["error"]["message"]
    assert api.rows() == 0


# The same mapping, in process, for what a worker reads and writes.


def test_storage_maps_os_errors_and_keeps_not_found(tmpfs: Path) -> None:
    storage = LocalStorage(tmpfs / "data")
    job_id = uuid.uuid4()
    with pytest.raises(NotFoundError):
        storage.get(job_id, CONTENT_FILE)
    filler = volumes.fill(tmpfs)
    with pytest.raises(StorageFullError) as full:
        storage.put(job_id, CONTENT_FILE, b"x" * 65536)
    assert full.value.code == "storage_full"
    assert not storage.job_dir(job_id).exists(), "no half directory"
    filler.unlink()
    storage.put(job_id, CONTENT_FILE, b"content")
    assert storage.get(job_id, CONTENT_FILE) == b"content"
    volumes.remount(tmpfs, "ro")
    try:
        with pytest.raises(StorageUnavailableError) as read_only:
            storage.put_many(job_id, {CONTENT_FILE: b"new"})
        assert read_only.value.details == {"errno": "EROFS"}
        assert storage.get(job_id, CONTENT_FILE) == b"content"
    finally:
        volumes.remount(tmpfs, "rw")
    shutil.rmtree(tmpfs / "data")
    with pytest.raises(StorageUnavailableError):
        storage.get(job_id, CONTENT_FILE)


def test_storage_errors_without_a_mount(tmp_path: Path) -> None:
    """A data dir that is a file, or gone: storage_unavailable, on any machine."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the data dir should be")
    with pytest.raises(StorageUnavailableError):
        LocalStorage(blocker).put(uuid.uuid4(), CONTENT_FILE, b"x")
    storage = LocalStorage(tmp_path / "data")
    (tmp_path / "data").rmdir()
    with pytest.raises(StorageUnavailableError):
        storage.put(uuid.uuid4(), CONTENT_FILE, b"x")
    assert not (tmp_path / "data").exists()
