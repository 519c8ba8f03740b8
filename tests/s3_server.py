"""A real S3-speaking server for the tests: moto's standalone server (``moto_server``, from
PyPI), started as its own process on loopback and spoken to over HTTP by boto3, exactly as
a deployment speaks to MinIO or AWS. Nothing in the code under test is mocked.

Imported by the tests that need it; ``S3Server.start()`` gives a server with a bucket of
this run's own, ``env()`` the variables a stylequeue process needs to use it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.processes import free_port, required

START_SECONDS = 30.0
ACCESS_KEY = "stylequeue-test"
SECRET_KEY = "stylequeue-test-secret"  # noqa: S105 - moto accepts any credentials


def moto_server_binary() -> str | None:
    beside = Path(sys.executable).parent / "moto_server"
    return str(beside) if beside.exists() else shutil.which("moto_server")


@dataclass
class S3Server:
    port: int
    log_path: Path
    bucket: str = field(default_factory=lambda: f"sq-{uuid.uuid4().hex[:12]}")
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, log_dir: Path, *, port: int | None = None) -> S3Server:
        server = cls(port=port or free_port(), log_path=log_dir / "moto_server.log")
        server.run()
        server.client().create_bucket(Bucket=server.bucket)
        return server

    def run(self) -> None:
        """Start (or start again, on the same port: its objects are gone then) the server."""
        binary = moto_server_binary()
        if binary is None:
            required("moto_server is not installed (pip install 'moto[server]')")
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [binary, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto_server exited: {self.log_path.read_text()[-2000:]}")
            try:
                self.client().list_buckets()
                return
            except Exception:  # noqa: BLE001 - not listening yet
                time.sleep(0.1)
        raise RuntimeError(f"moto_server did not answer in {START_SECONDS} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def env(self, prefix: str = "") -> dict[str, str]:
        """The variables that point a stylequeue process at this server's bucket."""
        url = f"s3://{self.bucket}/{prefix}" if prefix else f"s3://{self.bucket}"
        return {
            "STYLEQUEUE_STORAGE_URL": url,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
        }

    def client(self):  # type: ignore[no-untyped-def]
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
        )

    def keys(self, prefix: str = "") -> list[str]:
        response = self.client().list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return sorted(item["Key"] for item in response.get("Contents", []))
