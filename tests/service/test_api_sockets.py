"""How ``stylequeue api`` (gunicorn, 2 processes) holds its port: each process has a socket
of its own, so that connections opened together spread over both processes, and a
second server cannot start on a port the first holds.

With the master's one socket shared, the first process to wake accepted every waiting
connection: all of a load test's kept-alive connections went to one process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_process import ApiProcess
from limits_helpers import limited_env
from processes import free_port

pytestmark = pytest.mark.slow

CONNECTIONS = 32
AT_LEAST_EACH = 4  # a fair hash puts fewer on one of two processes about once in 10^6 runs
SECOND_START_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def api(
    postgresql_url: str, redis_url: str, redis_prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiProcess]:
    tmp = tmp_path_factory.mktemp("api-sockets")
    env = limited_env(postgresql_url, redis_url, f"{redis_prefix}api-sockets:", tmp / "data")
    server = ApiProcess(env, free_port(), tmp / "api.log")
    try:
        server.start()
        server.wait_ready()
        yield server
    finally:
        server.stop()


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def established_inodes(port: int) -> set[str]:
    """The inodes of the server's side of established IPv4 connections on ``port``."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        if local_port == port and fields[3] == "01":  # TCP_ESTABLISHED
            inodes.add(fields[9])
    return inodes


def request_health(connection: socket.socket) -> bytes:
    connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = connection.recv(4096)
        assert chunk, "the API closed a kept-alive connection"
        answer += chunk
    return answer.split(b"\r\n", 1)[0]


def test_connections_opened_together_spread_over_both_processes(api: ApiProcess) -> None:
    assert api.process is not None
    workers = children(api.process.pid)
    assert len(workers) == 2, workers
    connections = []
    try:
        for _ in range(CONNECTIONS):
            connection = socket.create_connection(("127.0.0.1", api.port), timeout=10.0)
            connections.append(connection)
        # Each one answered, so each one is held by the process that accepted it.
        for connection in connections:
            assert request_health(connection).startswith(b"HTTP/1.1 200"), "healthz"
        established = established_inodes(api.port)
        held = {pid: len(socket_inodes(pid) & established) for pid in workers}
    finally:
        for connection in connections:
            connection.close()
    print(f"API SOCKETS: {CONNECTIONS} connections held per process: {held}")
    assert sum(held.values()) == CONNECTIONS, held
    assert min(held.values()) >= AT_LEAST_EACH, held


def test_a_second_api_on_the_same_port_exits_in_one_line(api: ApiProcess) -> None:
    command = str(Path(sys.executable).with_name("stylequeue"))
    second = subprocess.run(
        [command, "api", "--host", "127.0.0.1", "--port", str(api.port)],
        env={**os.environ, **api.env},
        capture_output=True,
        text=True,
        timeout=SECOND_START_TIMEOUT,
        check=False,
    )
    lines = (second.stdout + second.stderr).strip().splitlines()
    assert second.returncode != 0, lines
    assert len(lines) == 1, lines
    assert f"127.0.0.1:{api.port}" in lines[0] and "--port" in lines[0], lines
    # The first server still holds the port alone, and answers.
    with socket.create_connection(("127.0.0.1", api.port), timeout=10.0) as connection:
        assert request_health(connection).startswith(b"HTTP/1.1 200")
