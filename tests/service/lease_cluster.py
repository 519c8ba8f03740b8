"""What the lease and fencing fault tests share: real workers, the reconciler, the API.

A short lease (LEASE_SECONDS) so that a worker paused past it is replaced within
seconds; the ``stylequeue scheduler`` process runs the reconciler every second
(it re-sends a job whose lease ran out); the API is ``stylequeue api`` (gunicorn),
asked over HTTP. Imported by the test modules, not fixtures.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import service_helpers
from api_process import ApiProcess
from fault_helpers import WorkerProcess
from processes import free_port, stop_process_group
from sqlalchemy import select

from cli.server_cmds import scheduler_argv
from shared import submissions
from shared.auth import create_client
from shared.celery_app import create_celery, enqueue_job
from shared.db import Database
from shared.models import Job, JobEvent
from shared.params import parse_params
from shared.settings import Settings
from shared.storage import LocalStorage, open_storage

LEASE_SECONDS = 2
WAIT_SECONDS = 120.0


def wait_for(what: str, found: Callable[[], Any], timeout: float = WAIT_SECONDS) -> Any:
    return service_helpers.wait_for(what, found, timeout=timeout, interval=0.05)


def cluster_env(
    name: str, *, postgresql_url: str, redis_url: str, redis_prefix: str, data_dir: Path
) -> dict[str, str]:
    return {
        "STYLEQUEUE_DATABASE_URL": postgresql_url,
        "STYLEQUEUE_REDIS_URL": redis_url,
        "STYLEQUEUE_REDIS_PREFIX": f"{redis_prefix}{name}:",
        "STYLEQUEUE_DATA_DIR": str(data_dir),
        "STYLEQUEUE_DEVICE": "cpu",
        "STYLEQUEUE_HEARTBEAT_SECONDS": "0.2",
        "STYLEQUEUE_LEASE_SECONDS": str(LEASE_SECONDS),
        "STYLEQUEUE_PREVIEW_SECONDS": "0.3",
        "STYLEQUEUE_CHECKPOINT_SECONDS": "0.5",
        "STYLEQUEUE_RECONCILE_SECONDS": "1",
        "OMP_NUM_THREADS": "1",
        "STYLEQUEUE_LOG_FORMAT": "json",  # the tests read a job's log lines by their fields
    }


class LeaseCluster:
    """One scheduler, named workers, an API process on demand, and their database."""

    def __init__(
        self, env: dict[str, str], log_dir: Path, *, scheduler_env: dict[str, str] | None = None
    ) -> None:
        """``scheduler_env``: what the scheduler gets on top of ``env``."""
        self.env = env
        self.log_dir = log_dir
        self.settings = Settings.from_env(env)
        self.db = Database(self.settings.database_url)
        self.storage = open_storage(self.settings)  # the data dir, or the S3 store the env names
        self.celery = create_celery(self.settings)
        self.workers: list[WorkerProcess] = []
        self.api: ApiProcess | None = None
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        scheduler = {**env, **(scheduler_env or {})}
        scheduler_settings = Settings.from_env(scheduler)
        scheduler_settings.data_dir.mkdir(parents=True, exist_ok=True)
        with (log_dir / "scheduler.log").open("wb") as log:
            self.scheduler = subprocess.Popen(
                scheduler_argv(scheduler_settings),
                env={**os.environ, **scheduler},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        with self.db.session() as session:
            client, key = create_client(session, "lease-cluster")
            self.client_id = client.id
        self.headers = {"Authorization": f"Bearer {key}"}

    def start_workers(self, *names: str, env: dict[str, str] | None = None) -> list[WorkerProcess]:
        """Start workers side by side (each takes seconds to load VGG19)."""
        extra = env or {}

        def start(name: str) -> WorkerProcess:
            return WorkerProcess({**self.env, **extra}, self.log_dir / f"{name}.log", name)

        with ThreadPoolExecutor(len(names)) as pool:
            started = list(pool.map(start, names))
        self.workers += started
        return started

    def start_api(self) -> ApiProcess:
        if self.api is None:
            self.api = ApiProcess(self.env, free_port(), self.log_dir / "api.log")
            self.api.start()
            self.api.wait_ready()
        return self.api

    def http(self, path: str) -> httpx.Response:
        api = self.start_api()
        return httpx.get(f"{api.base_url}{path}", headers=self.headers, timeout=30.0)

    def submit(
        self, content: bytes, styles: list[bytes], *, iterations: int, size: int = 32
    ) -> uuid.UUID:
        """A job stored as the API stores one, and sent to the workers."""
        with self.db.session() as session:
            job, _ = submissions.create_job(
                session,
                self.storage,
                client_id=self.client_id,
                params=parse_params({"size": size, "iterations": iterations, "scales": 1}),
                content=content,
                styles=styles,
                idempotency_key=None,
                enqueue=lambda job_id: enqueue_job(self.celery, job_id),
            )
        return job.id

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

    def files(self, job_id: uuid.UUID) -> dict[str, tuple[object, bytes]]:
        """The job's files now: name → (what changes when it is written again, bytes); temp
        files left out. On a filesystem that is the inode; in an S3 store the object's ETag
        and modification time. A file deleted while it is read (a worker removes a finished
        job's checkpoints just after its commit) is left out: it is gone."""
        if isinstance(self.storage, LocalStorage):
            directory = self.storage.job_dir(job_id)
            found: dict[str, tuple[object, bytes]] = {}
            for path in sorted(directory.iterdir()):
                if not path.name.startswith("."):
                    try:
                        found[path.name] = (path.stat().st_ino, path.read_bytes())
                    except FileNotFoundError:
                        continue
            return found
        return s3_objects(self.env, job_id)

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        if self.api is not None:
            self.api.stop()
        stop_process_group(self.scheduler)
        self.celery.close()
        self.db.dispose()


def s3_objects(env: dict[str, str], job_id: uuid.UUID) -> dict[str, tuple[object, bytes]]:
    """The objects of a job in the S3 store ``env`` names, listed by a client of the test's own."""
    import boto3

    bucket, _, prefix = env["STYLEQUEUE_STORAGE_URL"].removeprefix("s3://").partition("/")
    job_prefix = f"{prefix}/jobs/{job_id}/" if prefix else f"jobs/{job_id}/"
    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env.get("AWS_REGION", "us-east-1"),
    )
    found: dict[str, tuple[object, bytes]] = {}
    listing = client.list_objects_v2(Bucket=bucket, Prefix=job_prefix)
    for item in sorted(listing.get("Contents", []), key=lambda i: i["Key"]):
        try:
            body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        except client.exceptions.NoSuchKey:
            continue  # deleted between the listing and the read: gone
        found[item["Key"].removeprefix(job_prefix)] = ((item["ETag"], item["LastModified"]), body)
    return found


def pool_pid(claim: JobEvent) -> int:
    """The pid of the pool process that made a claim (the ``claimed`` event records it)."""
    assert claim.kind == "claimed" and claim.worker is not None
    return int(claim.data["pid"])


def process_state(pid: int) -> str:
    """The state letter of /proc/PID/stat: 'T' for a stopped process."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]
