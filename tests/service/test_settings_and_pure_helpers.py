"""Pure tests, no service: settings, cursors, limits, storage."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shared.errors import ConfigError, InvalidInputError, NotFoundError, ParameterError
from shared.pagination import DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT, Cursor, parse_limit
from shared.settings import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_MAX_UPLOAD_BYTES,
    DEFAULT_REDIS_URL,
    Settings,
)
from shared.sizes import check_output_size, output_shape
from shared.storage import CONTENT_FILE, RESULT_FILE, LocalStorage, style_file


def test_settings_defaults(tmp_path: Path) -> None:
    settings = Settings.from_env({"STYLEQUEUE_DATA_DIR": str(tmp_path)})
    assert settings.database_url == f"sqlite:///{tmp_path.resolve()}/stylequeue.sqlite3"
    assert settings.redis_url == DEFAULT_REDIS_URL
    assert settings.max_upload_bytes == DEFAULT_MAX_UPLOAD_BYTES
    assert settings.lease_seconds == DEFAULT_LEASE_SECONDS
    assert settings.admin_key is None and settings.device == "auto"


def test_settings_read_every_variable(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "STYLEQUEUE_DATABASE_URL": "postgresql://u@h/db",
            "STYLEQUEUE_REDIS_URL": "redis://r:6380/2",
            "STYLEQUEUE_DATA_DIR": str(tmp_path),
            "STYLEQUEUE_ADMIN_KEY": "secret",
            "STYLEQUEUE_REDIS_PREFIX": "p:",
            "STYLEQUEUE_MAX_UPLOAD_BYTES": "1000",
            "STYLEQUEUE_MAX_IMAGE_PIXELS": "2000",
            "STYLEQUEUE_DEVICE": "cuda",
            "STYLEQUEUE_WEIGHTS": "torchvision",
            "STYLEQUEUE_LEASE_SECONDS": "9.5",
        }
    )
    assert settings.database_url == "postgresql://u@h/db"
    assert (settings.redis_url, settings.redis_prefix) == ("redis://r:6380/2", "p:")
    assert (settings.max_upload_bytes, settings.max_image_pixels) == (1000, 2000)
    assert (settings.device, settings.weights, settings.lease_seconds) == (
        "cuda",
        "torchvision",
        9.5,
    )
    assert settings.admin_key == "secret"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("STYLEQUEUE_DATABASE_URL", "not a url"),
        ("STYLEQUEUE_REDIS_URL", "http://localhost"),
        ("STYLEQUEUE_MAX_UPLOAD_BYTES", "ten"),
        ("STYLEQUEUE_MAX_IMAGE_PIXELS", "-5"),
        ("STYLEQUEUE_DEVICE", "tpu"),
        ("STYLEQUEUE_WEIGHTS", "imagenet"),
        ("STYLEQUEUE_LEASE_SECONDS", "0"),
        ("STYLEQUEUE_HEARTBEAT_SECONDS", "soon"),
    ],
)
def test_a_malformed_setting_names_its_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({variable: value})
    assert variable in str(raised.value)
    assert raised.value.details == {"variable": variable}


def test_cursor_round_trip() -> None:
    cursor = Cursor(datetime(2026, 11, 27, 22, 0, 0, 123456, tzinfo=UTC), uuid.uuid4())
    assert Cursor.decode(cursor.encode()) == cursor


@pytest.mark.parametrize("token", ["", "!!!", "bm90LWpzb24", "WzEsMl0", "WyJ4IiwieSJd"])
def test_a_bad_cursor_is_invalid_cursor(token: str) -> None:
    with pytest.raises(InvalidInputError) as raised:
        Cursor.decode(token)
    assert raised.value.code == "invalid_cursor"


def test_parse_limit() -> None:
    assert parse_limit(None) == DEFAULT_PAGE_LIMIT
    assert parse_limit("7") == 7
    for bad in ("0", str(MAX_PAGE_LIMIT + 1), "x", "-1", "1.5"):
        with pytest.raises(InvalidInputError):
            parse_limit(bad)


def test_storage_put_get_exists_delete(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    job_id = uuid.uuid4()
    storage.put_many(job_id, {CONTENT_FILE: b"c", style_file(0): b"s"})
    storage.put(job_id, RESULT_FILE, b"r1")
    storage.put(job_id, RESULT_FILE, b"r2")  # replaced atomically
    assert storage.get(job_id, RESULT_FILE) == b"r2"
    assert storage.exists(job_id, style_file(0))
    assert sorted(p.name for p in storage.job_dir(job_id).iterdir()) == [
        CONTENT_FILE,
        RESULT_FILE,
        style_file(0),
    ], "no temp files left behind"
    storage.delete_job_files(job_id)
    assert not storage.exists(job_id, CONTENT_FILE)
    with pytest.raises(NotFoundError):
        storage.get(job_id, CONTENT_FILE)


@pytest.mark.parametrize("name", ["../escape.png", "style-x.png", "other.txt", ""])
def test_storage_refuses_names_it_does_not_know(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError):
        LocalStorage(tmp_path).path(uuid.uuid4(), name)


def test_the_api_process_never_imports_torch(tmp_path: Path) -> None:
    code = (
        "import sys; from api import create_app; from shared.settings import Settings; "
        f"create_app(Settings.from_env({{'STYLEQUEUE_DATA_DIR': {str(tmp_path)!r}}})); "
        "import worker.tasks; "  # the scheduler's worker imports the tasks module too
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ))


@pytest.mark.parametrize(
    ("width", "height", "size", "shape"),
    [
        (64, 48, 32, (32, 24)),
        (48, 64, 32, (24, 32)),
        (64, 64, 16, (16, 16)),
        (1000, 10, 512, (512, 5)),
    ],
)
def test_output_shape_keeps_the_aspect_ratio(
    width: int, height: int, size: int, shape: tuple[int, int]
) -> None:
    assert output_shape(width, height, size) == shape


def test_check_output_size_names_size() -> None:
    check_output_size(64, 48, 22)  # 22x16.5 -> 22x16: just enough
    with pytest.raises(ParameterError) as raised:
        check_output_size(64, 48, 20)  # 20x15
    assert raised.value.field == "size"
