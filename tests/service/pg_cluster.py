"""A PostgreSQL server of the test's own, to crash and restart (imported, not a fixture).

``initdb`` into a fresh temporary directory, ``pg_ctl start`` on a free port of
127.0.0.1 with its unix socket in that directory too: the shared server on 5432
is never touched. As root (initdb refuses root) every server command runs as the
``postgres`` OS user through ``runuser``, in a directory that user owns.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from processes import free_port, required

SUPERUSER = "stylequeue"  # the cluster's own superuser (trust auth on its own socket and port)
START_SECONDS = 60.0


def server_bindir() -> Path | None:
    """Where initdb, pg_ctl and postgres are, or None when this machine has no server."""
    candidates: list[Path] = []
    try:
        found = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        candidates.append(Path(found))
    except (OSError, subprocess.SubprocessError):
        pass
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for bindir in candidates:
        if all((bindir / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return bindir
    return None


class PostgresCluster:
    """One throwaway cluster: ``start()``, ``crash()`` (stop -m immediate), ``start()`` again,
    ``destroy()``. ``url`` is a database ``stylequeue`` in it."""

    def __init__(self) -> None:
        bindir = server_bindir()
        if bindir is None:
            required("no PostgreSQL server binaries (initdb, pg_ctl, postgres) on this machine")
        self.bindir = bindir
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                required("running as root, initdb needs the 'postgres' OS user; there is none")
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="sq_pg_"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "socket"
        self.log = self.root / "server.log"
        self.socket_dir.mkdir()
        if self._as_postgres:
            for path in (self.root, self.socket_dir):
                os.chown(path, user.pw_uid, user.pw_gid)
        try:
            self._run(
                "initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust",
                "--no-sync", "--encoding=UTF8", "--locale=C",
            )  # fmt: skip
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        self.admin_url = f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"
        self.url = f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/stylequeue"

    def _run(self, tool: str, *args: str, timeout: float = START_SECONDS) -> None:
        argv = [str(self.bindir / tool), *args]
        if self._as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if done.returncode != 0:
            raise AssertionError(
                f"{tool} failed ({done.returncode}):\n{done.stdout}{done.stderr}\n{self.server_log()}"
            )

    def server_log(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def start(self) -> None:
        """Start (or restart) the server on the same data directory and port; wait until it answers."""
        # fsync off: the test crashes the server processes, never the machine, and the
        # page cache survives a process crash. Commits still go through the WAL.
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.socket_dir} -c fsync=off "
            "-c shared_buffers=16MB -c max_connections=60"
        )
        self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-w", "-o", options)

    def running(self) -> bool:
        argv = [str(self.bindir / "pg_ctl"), "status", "-D", str(self.data)]
        if self._as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        done = subprocess.run(argv, capture_output=True, timeout=START_SECONDS, cwd=self.root)
        return done.returncode == 0

    def crash(self) -> None:
        """``pg_ctl stop -m immediate``: every server process quits at once, no checkpoint."""
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w")

    def create_database(self) -> None:
        import psycopg

        deadline = time.monotonic() + START_SECONDS
        while True:
            try:
                with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=3) as admin:
                    admin.execute("CREATE DATABASE stylequeue")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def destroy(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
