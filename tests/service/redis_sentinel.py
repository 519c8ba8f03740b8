"""A Redis primary, its replica and three sentinels for a test, on free loopback ports.

Debian's ``redis-server`` runs all five: ``redis-server sentinel.conf --sentinel`` is what
the ``redis-sentinel`` package runs. Nothing is saved (the database is the truth); the
sentinels agree on a failure with a quorum of two and declare the primary down after
``DOWN_AFTER_MS``. Imported by the test modules, not a fixture: ``SentinelGroup`` starts
everything in its constructor and ``stop()`` ends every process it started.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import service_helpers
from processes import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"  # Debian's
SENTINELS = 3
QUORUM = 2
DOWN_AFTER_MS = 1000  # no answer for this long: the primary is down (subjectively)
FAILOVER_TIMEOUT_MS = 3000  # a failover that stalls is tried again after about twice this
START_SECONDS = 30.0


def wait_for(what: str, found: Callable[[], Any], timeout: float = START_SECONDS) -> Any:
    return service_helpers.wait_for(what, found, timeout=timeout, interval=0.05)


class RedisNode:
    """One ``redis-server`` process (a data node or a sentinel) of the group."""

    def __init__(self, name: str, port: int, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.port = port
        self.log_path = log_path
        self.client = redis.Redis(
            port=port, socket_timeout=2, socket_connect_timeout=2, decode_responses=True
        )
        self.process = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_for(f"{name} to answer on port {port}", self.answers)

    def answers(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"{self.name} exited:\n{self.log()[-3000:]}")
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: a crashed machine as far as its clients are concerned."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=15)

    def stop(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class SentinelGroup:
    """A primary, a replica of it and ``SENTINELS`` sentinels watching them as ``master``."""

    def __init__(self, directory: Path, master: str) -> None:
        self.directory = directory
        self.master = master
        directory.mkdir(parents=True, exist_ok=True)
        self.nodes: list[RedisNode] = []
        try:
            self.primary = self._data_node("primary")
            self.replica = self._data_node("replica", replica_of=self.primary.port)
            wait_for("the replica to be in sync with the primary", self._replica_in_sync)
            self.sentinels = [self._sentinel(n) for n in range(1, SENTINELS + 1)]
            wait_for("every sentinel to know the replica and the others", self._sentinels_ready)
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        """STYLEQUEUE_REDIS_URL for these sentinels, in Kombu's form."""
        return ";".join(f"sentinel://127.0.0.1:{s.port}" for s in self.sentinels)

    def _data_node(self, name: str, *, replica_of: int | None = None) -> RedisNode:
        port = free_port()
        log = self.directory / f"{name}.log"
        argv = [
            REDIS_SERVER,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--dbfilename", f"{name}.rdb",
            "--save", "",
            "--appendonly", "no",
            "--maxmemory-policy", "noeviction",
            "--repl-diskless-sync-delay", "0",  # the replica's first sync at once, not in 5 s
            "--logfile", str(log),
        ]  # fmt: skip
        if replica_of is not None:
            argv += ["--replicaof", "127.0.0.1", str(replica_of)]
        node = RedisNode(name, port, argv, log)
        self.nodes.append(node)
        return node

    def _sentinel(self, number: int) -> RedisNode:
        port = free_port()
        name = f"sentinel-{number}"
        log = self.directory / f"{name}.log"
        config = self.directory / f"{name}.conf"  # a sentinel rewrites its file: one each
        config.write_text(
            "\n".join(
                [
                    f"port {port}",
                    "bind 127.0.0.1",
                    f"dir {self.directory}",
                    f"logfile {log}",
                    f"sentinel monitor {self.master} 127.0.0.1 {self.primary.port} {QUORUM}",
                    f"sentinel down-after-milliseconds {self.master} {DOWN_AFTER_MS}",
                    f"sentinel failover-timeout {self.master} {FAILOVER_TIMEOUT_MS}",
                    f"sentinel parallel-syncs {self.master} 1",
                    "",
                ]
            )
        )
        node = RedisNode(name, port, [REDIS_SERVER, str(config), "--sentinel"], log)
        self.nodes.append(node)
        return node

    def _replica_in_sync(self) -> bool:
        info = self.replica.client.info("replication")
        return info.get("master_link_status") == "up"

    def _sentinels_ready(self) -> bool:
        for sentinel in self.sentinels:
            try:
                replicas = sentinel.client.sentinel_slaves(self.master)
                others = sentinel.client.sentinel_sentinels(self.master)
            except redis.RedisError:
                return False
            if [r["port"] for r in replicas if not r["is_sdown"]] != [self.replica.port]:
                return False
            if len(others) != SENTINELS - 1:
                return False
        return True

    def master_port(self) -> set[int]:
        """The master's port as each sentinel that answers names it now."""
        ports = set()
        for sentinel in self.sentinels:
            with contextlib.suppress(redis.RedisError):
                found = sentinel.client.sentinel_get_master_addr_by_name(self.master)
                if found:
                    ports.add(int(found[1]))
        return ports

    def kill_primary(self) -> float:
        """SIGKILL the primary; returns the ``time.monotonic()`` of the kill."""
        self.primary.kill()
        return time.monotonic()

    def wait_promoted(self, timeout: float = 60.0) -> float:
        """Wait until every sentinel names the replica as master and it is one; returns
        the ``time.monotonic()`` when that was first seen."""

        def promoted() -> bool:
            if self.master_port() != {self.replica.port}:
                return False
            try:
                role = self.replica.client.execute_command("ROLE")
            except redis.RedisError:
                return False
            return bool(role and role[0] == "master")

        wait_for("the sentinels to promote the replica", promoted, timeout=timeout)
        return time.monotonic()

    def logs(self) -> str:
        return "\n".join(f"--- {n.name}\n{n.log()[-2000:]}" for n in self.nodes)

    def stop(self) -> None:
        """Stop every process of the group, the sentinels first (no failover on the way out)."""
        for node in reversed(self.nodes):
            node.stop()
