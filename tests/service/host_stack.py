"""The whole service on hosts of its own (``host_network``), each piece a real process.

- ``server`` (198.18.0.10, .11, .12): a throwaway PostgreSQL cluster (``initdb`` into a
  temporary directory, run as the ``postgres`` OS user) on .10, migrated with
  ``stylequeue db upgrade`` from that host; ``redis-server`` on .11; the object store
  (``moto_server``) on .12; ``stylequeue api`` (gunicorn) on .10 and ``stylequeue
  scheduler`` (the reconciler). One address per service, so that a worker host can
  lose exactly one of them.
- ``w1``, ``w2`` (.21, .22): ``stylequeue worker`` each, as production starts it. Every
  stylequeue process runs with its host's own hostname (``sqf-w1``...), so the worker
  name a claim records names the host.
- ``client`` (.2): the test itself (its thread enters that namespace), which submits
  over HTTP, reads the database and lists the bucket across the network.

Every process has a data dir of its own; only the store carries files between them.
``Fleet.close()`` stops every process, removes the cluster's directory and every
namespace, also after a failed start.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis
import service_helpers
from fault_helpers import READY_MARKERS
from host_network import PREFIX_LENGTH, SUBNET, Host, Network
from pg_cluster import SUPERUSER, PostgresCluster
from processes import required, stop_process_group
from sqlalchemy import select

from shared.auth import create_client
from shared.db import Database
from shared.models import Job, JobEvent
from tests.s3_server import S3Server, moto_server_binary

DB_ADDRESS, REDIS_ADDRESS, STORE_ADDRESS = "198.18.0.10", "198.18.0.11", "198.18.0.12"
API_ADDRESS = DB_ADDRESS
WORKER_OCTETS = {"w1": 21, "w2": 22}
CLIENT_OCTET = 2
PG_PORT, REDIS_PORT, STORE_PORT, API_PORT = 5432, 6379, 9000, 8000
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"  # Debian's
STYLEQUEUE = str(Path(sys.executable).with_name("stylequeue"))
START_SECONDS = 120.0  # a worker loads VGG19 on a busy 2-core machine
WAIT_SECONDS = 120.0
DATA = Path(__file__).resolve().parent.parent / "data"
CONTENT = (DATA / "tubingen.png").read_bytes()
STYLE = (DATA / "starry_night.png").read_bytes()

# Short enough to see each step within seconds, as the other fault tests run.
SERVICE_SETTINGS = {
    "STYLEQUEUE_DEVICE": "cpu",
    "STYLEQUEUE_LEASE_SECONDS": "4",
    "STYLEQUEUE_HEARTBEAT_SECONDS": "0.2",
    "STYLEQUEUE_PREVIEW_SECONDS": "0.5",
    "STYLEQUEUE_CHECKPOINT_SECONDS": "0.5",
    "STYLEQUEUE_RECONCILE_SECONDS": "1",
    # A job handed back after a storage failure is sent again this soon (default 300 s).
    "STYLEQUEUE_REQUEUE_AFTER_SECONDS": "3",
    "STYLEQUEUE_LOG_FORMAT": "json",  # the tests read the workers' lines by their fields
    "OMP_NUM_THREADS": "1",  # two workers and the test share two cores
}


def wait_for(what: str, found: Callable[[], Any], timeout: float = WAIT_SECONDS) -> Any:
    return service_helpers.wait_for(what, found, timeout=timeout, interval=0.1)


class HostProcess:
    """One command on a host, in a process group of its own, its output in ``log_path``."""

    def __init__(
        self,
        host: Host,
        command: Sequence[str],
        env: dict[str, str],
        log_path: Path,
        *,
        own_hostname: bool = False,
    ) -> None:
        self.host = host
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                host.argv(command, own_hostname=own_hostname),
                env={**os.environ, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def check_alive(self, what: str) -> None:
        if self.process.poll() is not None:
            raise AssertionError(
                f"{what} exited ({self.process.returncode}):\n{self.log()[-3000:]}"
            )

    def stop(self) -> None:
        """SIGQUIT to the group (Celery's cold shutdown, gunicorn's quick one), then SIGKILL."""
        stop_process_group(self.process)


class Worker(HostProcess):
    """``stylequeue worker`` on its host, with the host's own hostname."""

    def __init__(self, host: Host, env: dict[str, str], log_path: Path) -> None:
        super().__init__(host, [STYLEQUEUE, "worker"], env, log_path, own_hostname=True)

    def wait_ready(self) -> None:
        def ready() -> bool:
            self.check_alive(f"the worker on {self.host.name}")
            return all(marker in self.log() for marker in READY_MARKERS)

        wait_for(f"the worker on {self.host.name} to be ready", ready, timeout=START_SECONDS)


class HostPostgres(PostgresCluster):
    """The test's own cluster, its server run on ``host`` and listening on ``address`` only."""

    def __init__(self, host: Host, address: str) -> None:
        super().__init__()
        self.host = host
        self.port = PG_PORT
        self.admin_url = f"postgresql://{SUPERUSER}@{address}:{PG_PORT}/postgres"
        self.url = f"postgresql://{SUPERUSER}@{address}:{PG_PORT}/stylequeue"
        self.address = address
        # initdb's trust covers the socket and loopback only: every host of the network too.
        with (self.data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {SUBNET}.0/{PREFIX_LENGTH} trust\n")

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses={self.address} "
            f"-c unix_socket_directories={self.socket_dir} -c fsync=off "
            "-c shared_buffers=16MB -c max_connections=80"
        )
        assert self.bindir is not None
        pg_ctl = [str(self.bindir / "pg_ctl"), "start", "-D", str(self.data), "-l", str(self.log)]
        argv = self.host.argv(["runuser", "-u", "postgres", "--", *pg_ctl, "-w", "-o", options])
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=START_SECONDS, cwd=self.root
        )
        if done.returncode != 0:
            raise AssertionError(f"pg_ctl start failed:\n{done.stderr}\n{self.server_log()}")


@dataclass
class HostStore(S3Server):
    """moto_server on ``host``, listening on ``address`` only."""

    host: Host | None = None
    address: str = STORE_ADDRESS

    @property
    def endpoint(self) -> str:
        return f"http://{self.address}:{self.port}"

    def run(self) -> None:
        binary = moto_server_binary()
        if binary is None:
            required("moto_server is not installed (pip install 'moto[server]')")
        assert self.host is not None
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.host.argv([binary, "-H", self.address, "-p", str(self.port)]),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def answers() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"moto_server exited: {self.log_path.read_text()[-2000:]}")
            try:
                self.client().list_buckets()
            except Exception:  # noqa: BLE001 - not listening yet
                return False
            return True

        wait_for("the object store to answer", answers, timeout=START_SECONDS)


class Fleet:
    """Every host and process of the service; the test's thread is on ``client`` meanwhile."""

    def __init__(self, tmp: Path) -> None:
        if not os.path.exists(REDIS_SERVER):
            required("redis-server is not installed (Debian's redis-server package)")
        self.tmp = tmp
        self.workers: dict[str, Worker] = {}
        # Undone in reverse: the processes, the test's clients, the servers, the network.
        self._undo = contextlib.ExitStack()
        self.net = Network()
        self._undo.callback(self.net.close)
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        net = self.net
        self.server = net.add_host("server", 10, 11, 12)
        self.hosts = {name: net.add_host(name, octet) for name, octet in WORKER_OCTETS.items()}
        self.client = net.add_host("client", CLIENT_OCTET)
        self._undo.enter_context(net.entered(self.client))

        self.postgres = HostPostgres(self.server, DB_ADDRESS)
        self._undo.callback(self.postgres.destroy)
        self.postgres.start()
        self.postgres.create_database()
        redis_dir = self.dir("redis")
        self.redis = HostProcess(
            self.server,
            [REDIS_SERVER, "--bind", REDIS_ADDRESS, "--port", str(REDIS_PORT),
             "--save", "", "--appendonly", "no", "--protected-mode", "no",
             "--maxmemory-policy", "noeviction", "--dir", str(redis_dir)],
            {},
            self.tmp / "redis.log",
        )  # fmt: skip
        self._undo.callback(self.redis.process.kill)
        self.store = HostStore(STORE_PORT, self.tmp / "moto_server.log", host=self.server)
        self._undo.callback(self.store.stop)
        self.store.run()
        self.store.client().create_bucket(Bucket=self.store.bucket)
        self.env = {
            "STYLEQUEUE_DATABASE_URL": self.postgres.url,
            "STYLEQUEUE_REDIS_URL": f"redis://{REDIS_ADDRESS}:{REDIS_PORT}/0",
            "STYLEQUEUE_REDIS_PREFIX": "fleet:",
            **self.store.env(prefix="fleet"),
            **SERVICE_SETTINGS,
        }
        self.prefix = "fleet"
        self.broker = redis.Redis(
            host=REDIS_ADDRESS, port=REDIS_PORT, socket_timeout=5, decode_responses=True
        )
        self._undo.callback(self.broker.close)
        wait_for("Redis to answer", lambda: self._pings(self.broker), timeout=START_SECONDS)
        migrate = subprocess.run(
            self.server.argv([STYLEQUEUE, "db", "upgrade"]),
            env={**os.environ, **self.env, "STYLEQUEUE_DATA_DIR": str(self.dir("migrate"))},
            capture_output=True,
            text=True,
            timeout=START_SECONDS,
        )
        assert migrate.returncode == 0, migrate.stdout + migrate.stderr

        self.db = Database(self.postgres.url)
        self._undo.callback(self.db.dispose)
        with self.db.session() as session:
            _, key = create_client(session, "fleet")
        self.headers = {"Authorization": f"Bearer {key}"}
        self.http = httpx.Client(base_url=f"http://{API_ADDRESS}:{API_PORT}", timeout=30.0)
        self._undo.callback(self.http.close)

        self.api = self.start_on(self.server, "api", ["api", "--host", API_ADDRESS])
        self.scheduler = self.start_on(self.server, "scheduler", ["scheduler"])
        with ThreadPoolExecutor(len(self.hosts)) as pool:
            started = list(pool.map(self._start_worker, self.hosts.values()))
        self.workers = {worker.host.name: worker for worker in started}
        wait_for("the API to answer", self._api_ready, timeout=START_SECONDS)

    def _pings(self, client: redis.Redis) -> bool:
        self.redis.check_alive("redis-server")
        with contextlib.suppress(redis.RedisError):
            return bool(client.ping())
        return False

    def _api_ready(self) -> bool:
        self.api.check_alive("the API")
        with contextlib.suppress(httpx.TransportError):
            return self.http.get("/readyz").status_code == 200
        return False

    def dir(self, name: str) -> Path:
        path = self.tmp / name
        path.mkdir(exist_ok=True)
        return path

    def start_on(self, host: Host, name: str, args: list[str]) -> HostProcess:
        env = {**self.env, "STYLEQUEUE_DATA_DIR": str(self.dir(f"{name}-data"))}
        process = HostProcess(
            host, [STYLEQUEUE, *args], env, self.tmp / f"{name}.log", own_hostname=True
        )
        self._undo.callback(process.stop)
        return process

    def _start_worker(self, host: Host) -> Worker:
        env = {**self.env, "STYLEQUEUE_DATA_DIR": str(self.dir(f"{host.name}-data"))}
        worker = Worker(host, env, self.tmp / f"{host.name}.log")
        self._undo.callback(worker.stop)
        worker.wait_ready()
        return worker

    # -- what the tests ask ---------------------------------------------------------------

    def submit(self, *, iterations: int, size: int = 32) -> uuid.UUID:
        params = f'{{"size": {size}, "iterations": {iterations}, "scales": 1}}'
        response = self.http.post(
            "/v1/jobs",
            headers=self.headers,
            files={"content": ("c.png", CONTENT), "style": ("s.png", STYLE)},
            # Computed, never a copy of an earlier job: the workers are what is tested.
            data={"params": params, "cache": "false"},
        )
        assert response.status_code == 202, response.text
        return uuid.UUID(response.json()["id"])

    def row(self, job_id: uuid.UUID) -> Job:
        with self.db.session() as session:
            found = session.get(Job, job_id)
            assert found is not None
            return found

    def events(self, job_id: uuid.UUID, kind: str | None = None) -> list[JobEvent]:
        with self.db.session() as session:
            query = select(JobEvent).where(JobEvent.job_id == job_id)
            if kind is not None:
                query = query.where(JobEvent.kind == kind)
            return list(session.scalars(query.order_by(JobEvent.id)))

    def claim(self, job_id: uuid.UUID, attempt: int) -> JobEvent | None:
        found = [e for e in self.events(job_id, "claimed") if e.attempt == attempt]
        return found[0] if found else None

    def worker_of(self, event: JobEvent) -> Worker:
        """The worker (so the host) that wrote ``event``: its name holds its host's hostname
        (``<host>/<pid>``, or a Celery node name ``<name>@<host>``)."""
        assert event.worker is not None
        parts = set(re.split(r"[/@]", event.worker))
        [worker] = [w for w in self.workers.values() if w.host.hostname in parts]
        return worker

    def consuming(self, worker: Worker) -> bool:
        """Whether ``worker`` waits for a message now: Redis had a BRPOP from its host within
        the last second (kombu's BRPOP lasts a second; a worker busy with a job sends none)."""
        return any(
            client["addr"].rsplit(":", 1)[0] == worker.host.address
            and client["cmd"] == "brpop"
            and int(client["idle"]) <= 1
            for client in self.broker.client_list()
        )

    def other(self, worker: Worker) -> Worker:
        [found] = [w for w in self.workers.values() if w is not worker]
        return found

    def keys(self, job_id: uuid.UUID) -> list[str]:
        """The names of the job's objects in the bucket now."""
        return sorted(self.objects(job_id))

    def objects(self, job_id: uuid.UUID) -> dict[str, float]:
        """The job's objects in the bucket now: name → when the store wrote it (seconds
        since the epoch, whole seconds: the listing's precision)."""
        prefix = f"{self.prefix}/jobs/{job_id}/"
        listed = self.store.client().list_objects_v2(Bucket=self.store.bucket, Prefix=prefix)
        return {
            item["Key"].removeprefix(prefix): item["LastModified"].timestamp()
            for item in listed.get("Contents", [])
        }

    def object(self, job_id: uuid.UUID, name: str) -> bytes:
        stored = self.store.client().get_object(
            Bucket=self.store.bucket, Key=f"{self.prefix}/jobs/{job_id}/{name}"
        )
        data: bytes = stored["Body"].read()
        return data

    def result(self, job_id: uuid.UUID) -> bytes:
        response = self.http.get(f"/v1/jobs/{job_id}/result", headers=self.headers)
        assert response.status_code == 200, response.text
        return response.content

    def close(self) -> None:
        """Stop everything in the reverse order of its start, going on past a failure (which
        is raised at the end)."""
        self._undo.close()
