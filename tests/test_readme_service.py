"""The README's "The service" commands, run as a newcomer runs them, word for word.

The two shell blocks of that section are read from README.md itself, so the README and
this test cannot drift apart: the first block (the terminal that runs ``stylequeue up``)
runs in bash in the background, the second (the client terminal) in another bash once
the first says it is up; then ``status``, ``result`` and ``list`` of the job it made.

Both run in a fresh directory laid out like a clone (``examples/`` and ``.venv``), with
every ``STYLEQUEUE_*`` variable removed from the environment: the data dir is the
relative default ``./var``, the API the README's port 8000, the Redis the machine's
on 127.0.0.1:6379 (``up`` starts one only when none answers there).

Isolation. With no variable set, the stack uses Redis's default key space (keys under
``stylequeue:``) and port 8000, as the README's user does; the test runs' own prefixes
(``sq_test_<run>:``) never meet it. Two runs of this test on one machine would share
both, so a machine-wide lock file makes them take turns. Everything else the stack makes
is in the temporary directory (SQLite database, job files). Once the stack has stopped,
the test deletes the Redis keys under ``stylequeue:`` that were not there before it
started (a job leaves none behind when it is done, but the first run on a Redis creates
Celery's bindings and the reconciler's marker). A default-configured stylequeue running
on the same Redis at the same time (``scripts/demo``) would share the queue with it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from processes import required
from test_up import session_processes

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_PORT = 8000
README_URL = f"http://127.0.0.1:{README_PORT}"
DEFAULT_REDIS = ("127.0.0.1", 6379)
DEFAULT_PREFIX = "stylequeue:"
LOCK_FILE = Path(tempfile.gettempdir()) / "stylequeue-readme-service-test.lock"
UP_TIMEOUT_SECONDS = 180.0  # the worker loads VGG19 on a busy CPU
CLIENT_TIMEOUT_SECONDS = 900.0  # the README's job: about 2 minutes on two quiet CPU cores
STOP_TIMEOUT_SECONDS = 60.0
UP_LINE = "stylequeue is up"


def service_blocks() -> tuple[str, str]:
    """The shell blocks of README's "## The service": (the server terminal, the client one)."""
    text = README.read_text()
    section = text.split("\n## The service\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```\n(.*?)^```$", section, flags=re.MULTILINE | re.DOTALL)
    assert len(blocks) >= 2, "README's service section: the up terminal, then the client one"
    server, client = blocks[0], blocks[1]
    assert "stylequeue up" in server and "stylequeue submit" in client
    return server, client


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG: {data[:40]!r}"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def jpeg_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
        return width, height


def param_value(block: str, name: str) -> str:
    found = re.search(rf"--param '?{name}=([^' \\\n]+)", block)
    assert found, f"no --param {name}= in the README's submit"
    return found.group(1)


@contextlib.contextmanager
def machine_lock() -> Iterator[None]:
    with LOCK_FILE.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run of this test: wait for it
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def port_taken(port: int) -> bool:
    with socket.socket() as probe:
        # As the server binds: a closed connection's TIME-WAIT does not count, a listener does.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


def default_keys() -> set[bytes]:
    import redis

    client = redis.Redis(*DEFAULT_REDIS, socket_connect_timeout=2)
    try:
        return set(client.scan_iter(match=f"{DEFAULT_PREFIX}*", count=1000))
    except redis.RedisError:
        return set()  # none answers: up starts a Redis of its own, in the data dir
    finally:
        client.close()


def delete_keys(keys: set[bytes]) -> None:
    import redis

    if not keys:
        return
    client = redis.Redis(*DEFAULT_REDIS, socket_connect_timeout=2)
    try:
        client.delete(*keys)
    finally:
        client.close()


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("STYLEQUEUE_")}


def bash(script: str, cwd: Path, env: dict[str, str], timeout: float) -> str:
    done = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = f"$ {script}\n{done.stdout}{done.stderr}"
    assert done.returncode == 0, output
    return output


@pytest.mark.slow
@pytest.mark.timeout(UP_TIMEOUT_SECONDS + CLIENT_TIMEOUT_SECONDS + 2 * STOP_TIMEOUT_SECONDS)
def test_the_readme_service_block_as_written(tmp_path: Path) -> None:
    server_block, client_block = service_blocks()
    clone = tmp_path / "stylequeue"
    clone.mkdir()
    shutil.copytree(ROOT / "examples", clone / "examples")
    (clone / ".venv").symlink_to(ROOT / ".venv")
    env = clean_env()

    with machine_lock():
        if port_taken(README_PORT):
            required(f"port {README_PORT} (the README's) is taken on this machine")
        keys_before = default_keys()
        up_log = tmp_path / "up.log"
        with up_log.open("wb") as log:
            up = subprocess.Popen(
                ["bash", "-e", "-c", server_block],
                cwd=clone,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own terminal: Ctrl-C reaches bash and up
                preexec_fn=_ctrl_c_as_in_a_terminal,
            )
        try:
            deadline = time.monotonic() + UP_TIMEOUT_SECONDS
            while UP_LINE not in up_log.read_text(errors="replace"):
                assert up.poll() is None, up_log.read_text()[-3000:]
                assert time.monotonic() < deadline, up_log.read_text()[-3000:]
                time.sleep(0.5)

            # The client terminal, then what the README names next, for the job it made.
            key_file = tmp_path / "key"
            bash(
                client_block + f'\nprintf %s "$STYLEQUEUE_API_KEY" > {key_file}\n',
                clone,
                env,
                CLIENT_TIMEOUT_SECONDS,
            )
            key = key_file.read_text()
            listed = httpx.get(
                f"{README_URL}/v1/jobs", headers={"Authorization": f"Bearer {key}"}
            ).json()
            [job] = listed["jobs"]
            assert job["status"] == "succeeded", job
            job_id = job["id"]

            output = cat_png_checked(clone, client_block)
            client_env = {**env, "STYLEQUEUE_URL": README_URL, "STYLEQUEUE_API_KEY": key}
            again = bash(
                f". .venv/bin/activate\nstylequeue status {job_id}\n"
                f"stylequeue result {job_id} -o again.png\nstylequeue list\n",
                clone,
                client_env,
                60,
            )
            assert "succeeded" in again and job_id in again, again
            assert (clone / "again.png").read_bytes() == output.read_bytes()

            # Ctrl-C in up's terminal stops everything it started.
            os.killpg(up.pid, signal.SIGINT)
            up.wait(timeout=STOP_TIMEOUT_SECONDS)
            assert not session_processes(up.pid), "a process that up started outlived it"
            assert (clone / "var" / "stylequeue.sqlite3").exists()
        finally:
            for pid in session_processes(up.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            up.wait()
            delete_keys(default_keys() - keys_before)


def _ctrl_c_as_in_a_terminal() -> None:
    # A terminal's foreground job takes Ctrl-C, even when this test runs in the
    # background of a script (where the shell had SIGINT ignored, and every child
    # would inherit that).
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cat_png_checked(clone: Path, client_block: str) -> Path:
    """The README's ``-o`` file: a PNG whose longest side is ``size``, in chelsea's shape."""
    output_name = re.search(r"--wait -o (\S+)", client_block)
    assert output_name, "no `--wait -o FILE` in the README's submit"
    output = clone / output_name.group(1)
    width, height = png_size(output)
    size = int(param_value(client_block, "size"))
    content = re.search(r"stylequeue submit (\S+)", client_block)
    assert content
    content_w, content_h = jpeg_size(clone / content.group(1))
    assert max(width, height) == size
    assert abs(width / height - content_w / content_h) < 0.02, (width, height)
    return output


def test_a_relative_data_dir_is_made_absolute_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.settings import Settings

    monkeypatch.chdir(tmp_path)
    for environ in ({}, {"STYLEQUEUE_DATA_DIR": "here/var"}):
        settings = Settings.from_env(environ)
        assert settings.data_dir.is_absolute()
        assert settings.data_dir.parent in (tmp_path.resolve(), tmp_path.resolve() / "here")
        assert settings.database_url == f"sqlite:///{settings.data_dir / 'stylequeue.sqlite3'}"
    built = Settings(database_url="sqlite://", data_dir=Path("var"))
    assert built.data_dir == tmp_path.resolve() / "var"


def readme_shell_blocks() -> list[str]:
    return re.findall(r"^```\n(.*?)^```$", README.read_text(), flags=re.MULTILINE | re.DOTALL)


def test_what_the_readme_commands_write_is_ignored_by_git() -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    outputs = {
        name
        for block in readme_shell_blocks()
        for name in re.findall(r"(?:^|\s)(?:-o|--output)\s+(\S+)", block)
    }
    assert {"out.png", "cat.png"} <= outputs, outputs
    for name in sorted(outputs) + ["var/stylequeue.sqlite3", "var/jobs/x/result.png"]:
        done = subprocess.run(["git", "check-ignore", "-q", name], cwd=ROOT)
        assert done.returncode == 0, f"{name}, which a README command writes, is not in .gitignore"


def test_pyproject_points_at_readme_text_that_exists() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    pointers = re.findall(r'README(?:\.md)?, "([^"]+)"', pyproject)
    assert pointers, "the PyTorch pins' comment names the README section it refers to"
    text = README.read_text()
    for heading in pointers:
        assert f"\n## {heading}\n" in text, heading
        section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
        assert "CUDA" in section and "6 GB" in section, heading
