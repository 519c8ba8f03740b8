"""Both stores behind ``shared.storage.Storage`` keep the same promises: a directory, and an
S3 bucket on a real S3-speaking server process (moto_server, over HTTP on loopback)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.errors import NotFoundError, StorageUnavailableError
from shared.settings import Settings
from shared.storage import (
    CONTENT_FILE,
    LocalStorage,
    Storage,
    checkpoint_file,
    open_storage,
    preview_file,
    result_file,
    style_file,
)
from shared.storage_s3 import S3Storage
from tests.s3_server import S3Server


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server.start(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = s3.env(prefix="tenant-a")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture(params=["directory", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "directory":
        return LocalStorage(tmp_path)
    env = request.getfixturevalue("s3_env")
    return open_storage(Settings.from_env({**env, "STYLEQUEUE_DATA_DIR": str(tmp_path)}))


def test_files_go_in_and_come_back(storage: Storage) -> None:
    job = uuid.uuid4()
    storage.put_many(job, {CONTENT_FILE: b"content", style_file(0): b"style"})
    storage.put(job, result_file(1), b"result")
    assert storage.get(job, CONTENT_FILE) == b"content"
    assert storage.get(job, style_file(0)) == b"style"
    assert storage.get(job, result_file(1)) == b"result"
    assert storage.exists(job, result_file(1)) and not storage.exists(job, result_file(2))
    with pytest.raises(NotFoundError):
        storage.get(job, result_file(2))
    storage.delete(job, result_file(1))
    assert not storage.exists(job, result_file(1))
    storage.delete(job, result_file(1))  # deleting what is gone is no error


def test_an_overwrite_replaces_the_whole_file(storage: Storage) -> None:
    job = uuid.uuid4()
    storage.put(job, preview_file(1, 5), b"x" * 100_000, durable=False)
    storage.put(job, preview_file(1, 5), b"short", durable=False)
    assert storage.get(job, preview_file(1, 5)) == b"short"


def test_only_checkpoints_go_with_delete_checkpoints(storage: Storage) -> None:
    job, other = uuid.uuid4(), uuid.uuid4()
    storage.put_many(
        job, {CONTENT_FILE: b"c", checkpoint_file(1, 10): b"1", checkpoint_file(2, 20): b"2"}
    )
    storage.put(job, result_file(2), b"r")
    storage.put(other, checkpoint_file(1, 10), b"other's")
    storage.delete_checkpoints(job)
    assert not storage.exists(job, checkpoint_file(1, 10))
    assert not storage.exists(job, checkpoint_file(2, 20))
    assert storage.get(job, result_file(2)) == b"r" and storage.get(job, CONTENT_FILE) == b"c"
    assert storage.get(other, checkpoint_file(1, 10)) == b"other's"


def test_delete_job_files_removes_one_job_entirely(storage: Storage) -> None:
    job, other = uuid.uuid4(), uuid.uuid4()
    storage.put_many(job, {CONTENT_FILE: b"c", style_file(0): b"s", style_file(1): b"t"})
    storage.put(other, CONTENT_FILE, b"other's")
    storage.delete_job_files(job)
    for name in (CONTENT_FILE, style_file(0), style_file(1)):
        assert not storage.exists(job, name)
    assert storage.get(other, CONTENT_FILE) == b"other's"
    storage.delete_job_files(job)  # again: nothing left, no error


def test_names_outside_the_job_files_are_refused(storage: Storage) -> None:
    with pytest.raises(ValueError, match="not a job file name"):
        storage.put(uuid.uuid4(), "../../etc/passwd", b"x")


def test_objects_live_under_the_prefix_by_job(s3: S3Server, s3_env: dict[str, str]) -> None:
    storage = S3Storage(s3_env["STYLEQUEUE_STORAGE_URL"])
    job = uuid.uuid4()
    storage.put_many(job, {CONTENT_FILE: b"c", style_file(0): b"s"})
    assert s3.keys(f"tenant-a/jobs/{job}/") == [
        f"tenant-a/jobs/{job}/{CONTENT_FILE}",
        f"tenant-a/jobs/{job}/{style_file(0)}",
    ]


def test_a_presigned_url_serves_the_object_without_credentials(
    s3: S3Server, s3_env: dict[str, str]
) -> None:
    storage = S3Storage(s3_env["STYLEQUEUE_STORAGE_URL"])
    job = uuid.uuid4()
    storage.put(job, result_file(1), b"\x89PNG result bytes")
    url = storage.presigned_url(job, result_file(1))
    assert "Signature=" in url or "X-Amz-Signature=" in url
    assert httpx.get(url, timeout=10).content == b"\x89PNG result bytes"
    assert LocalStorage(Path("/nonexistent")).presigned_url(job, result_file(1)) is None


def test_an_unreachable_store_is_storage_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    down = S3Server.start(tmp_path)
    for name, value in down.env().items():
        monkeypatch.setenv(name, value)
    storage = S3Storage(down.env()["STYLEQUEUE_STORAGE_URL"])
    job = uuid.uuid4()
    storage.put(job, CONTENT_FILE, b"c")
    down.stop()
    with pytest.raises(StorageUnavailableError, match="cannot be reached"):
        storage.put_many(job, {CONTENT_FILE: b"c", style_file(0): b"s"})
    with pytest.raises(StorageUnavailableError):
        storage.get(job, CONTENT_FILE)
    storage.delete_job_files(job)  # retention's clean-up tries again later; no error now


def test_a_missing_bucket_is_storage_unavailable(s3: S3Server, s3_env: dict[str, str]) -> None:
    storage = S3Storage(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}")
    with pytest.raises(StorageUnavailableError, match="NoSuchBucket"):
        storage.put(uuid.uuid4(), CONTENT_FILE, b"c")


def test_a_half_written_submit_leaves_no_object(s3: S3Server, s3_env: dict[str, str]) -> None:
    """One PUT of several fails (the bucket is gone mid-way here): the others are removed."""
    storage = S3Storage(s3_env["STYLEQUEUE_STORAGE_URL"])
    job = uuid.uuid4()
    files = {CONTENT_FILE: b"c" * 10, style_file(0): b"s", style_file(1): b"t"}
    original = storage._put_object

    def flaky(key: str, data: bytes) -> None:
        if key.endswith(style_file(1)):
            raise ConnectionError("the link dropped")
        original(key, data)

    storage._put_object = flaky  # type: ignore[method-assign]
    with pytest.raises(StorageUnavailableError):
        storage.put_many(job, files)
    assert s3.keys(f"tenant-a/jobs/{job}/") == []
