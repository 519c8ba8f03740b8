"""Every command that opens the database, run for real from a directory that is not the
stack's, says in one line which database it tried and how to point at the right one
(STYLEQUEUE_DATA_DIR / STYLEQUEUE_DATABASE_URL, or `stylequeue db upgrade` first), never a
traceback: no database file, a data dir without one, a file with no tables, a directory
that cannot hold one, a PostgreSQL where none answers.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from processes import free_port, stop_process_group

import migrations

ROOT = Path(__file__).resolve().parents[1]
STYLEQUEUE = str(Path(sys.executable).parent / "stylequeue")
HOW_TO_POINT = ("STYLEQUEUE_DATA_DIR", "STYLEQUEUE_DATABASE_URL", "stylequeue db upgrade")
COMMAND_SECONDS = 120.0
# The commands that need the schema (`worker` and `scheduler` would go on into Celery).
NEEDS_SCHEMA = (["keys", "create", "alice"], ["api"], ["worker"], ["scheduler"])


def run(args: list[str], cwd: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STYLEQUEUE_")}
    env.update(variables)
    return subprocess.run(
        [STYLEQUEUE, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_SECONDS,
    )


def one_line(done: subprocess.CompletedProcess[str], *expected: str) -> str:
    """The command failed with one line on stderr, naming the database and how to fix it."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    for text in (*HOW_TO_POINT, *expected):
        assert text in lines[0], (text, lines[0])
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("args", NEEDS_SCHEMA, ids=lambda a: " ".join(a))
def test_another_directory_without_a_database(args: list[str], tmp_path: Path) -> None:
    expected_file = tmp_path / "var" / "stylequeue.sqlite3"
    line = one_line(run(args, tmp_path), str(expected_file))
    assert "no database" in line
    assert not (tmp_path / "var").exists(), "a failed command left a data dir behind"


@pytest.mark.slow
@pytest.mark.parametrize("args", NEEDS_SCHEMA, ids=lambda a: " ".join(a))
def test_a_database_without_the_tables(args: list[str], tmp_path: Path) -> None:
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "stylequeue.sqlite3").write_bytes(b"")  # an empty SQLite database
    line = one_line(run(args, tmp_path), str(tmp_path / "var" / "stylequeue.sqlite3"))
    assert "no stylequeue tables" in line


@pytest.mark.slow
def test_keys_create_names_the_data_dir_it_was_given(tmp_path: Path) -> None:
    data_dir = tmp_path / "elsewhere"
    data_dir.mkdir()
    one_line(
        run(["keys", "create", "alice"], ROOT, STYLEQUEUE_DATA_DIR=str(data_dir)),
        str(data_dir / "stylequeue.sqlite3"),
    )
    # Pointed at a real one, the same command works.
    migrations.upgrade(f"sqlite:///{data_dir / 'stylequeue.sqlite3'}")
    done = run(["keys", "create", "alice"], ROOT, STYLEQUEUE_DATA_DIR=str(data_dir))
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [["keys", "create", "alice"], ["db", "upgrade"], ["up", "--port", str(free_port())]],
    ids=lambda a: a[0] if a[0] != "keys" else "keys create",
)
def test_a_database_server_that_does_not_answer(args: list[str], tmp_path: Path) -> None:
    port = free_port()
    postgres = f"postgresql://someone:secret@127.0.0.1:{port}/stylequeue"
    line = one_line(
        run(args, tmp_path, STYLEQUEUE_DATABASE_URL=postgres),
        "cannot open the database",
        "STYLEQUEUE_DATABASE_URL",
        f"127.0.0.1:{port}",
    )
    assert "secret" not in line


@pytest.mark.slow
def test_the_api_starts_anyway_when_its_database_server_is_down(tmp_path: Path) -> None:
    """A database outage is no misconfiguration: the API says so in one line and serves
    (503s until the database is back), as it does when the outage comes later."""
    import httpx

    db_port, api_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STYLEQUEUE_")}
    env["STYLEQUEUE_DATABASE_URL"] = f"postgresql://someone@127.0.0.1:{db_port}/stylequeue"
    log_path = tmp_path / "api.log"
    with log_path.open("wb") as log:
        api = subprocess.Popen(
            [STYLEQUEUE, "api", "--port", str(api_port)],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + COMMAND_SECONDS
        while True:
            assert api.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{api_port}/healthz", timeout=1).is_success:
                    break
            time.sleep(0.2)
        assert "cannot open the database" in log_path.read_text() and "starting anyway" in (
            log_path.read_text()
        )
        assert httpx.get(f"http://127.0.0.1:{api_port}/readyz", timeout=5).status_code == 503
    finally:
        stop_process_group(api)


@pytest.mark.slow
@pytest.mark.parametrize("args", [["db", "upgrade"], ["up", "--port", str(free_port())]])
def test_a_sqlite_file_that_cannot_be_made(args: list[str], tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    url = f"sqlite:///{tmp_path / 'file' / 'stylequeue.sqlite3'}"
    line = one_line(run(args, tmp_path, STYLEQUEUE_DATABASE_URL=url), "cannot open the database")
    assert "unable to open database file" in line
