"""Job files in an S3-compatible object store (AWS S3, MinIO, Ceph, R2, ...).

``STYLEQUEUE_STORAGE_URL=s3://BUCKET/PREFIX`` puts every job file under
``PREFIX/jobs/<job id>/<name>`` in ``BUCKET``; the connection comes from the
standard AWS variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_REGION``, ``AWS_ENDPOINT_URL`` for a store other than AWS), read by boto3
itself. The same names as on a filesystem (shared/storage.py), so the
attempt-fenced names work unchanged: a worker that lost its lease can only write
objects of its own attempt, which no row names.

The client is boto3, the ecosystem's standard (maintained by AWS, every
S3-compatible store tests against it, presigned URLs and the credential chain
built in). A job writes a handful of objects, so its per-request overhead (a few
ms of CPU) does not matter next to the upload itself. Clients are made per
process: a boto3 client must not cross a fork (gunicorn, Celery).

A PUT that returned 200 is durable in S3's sense, which is what a 202 promises.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

from shared.errors import (
    ConfigError,
    NotFoundError,
    StorageError,
    StorageFullError,
    StorageUnavailableError,
)
from shared.storage import CHECKPOINT_FILE, JOBS_DIR, check_name, is_checkpoint

CONNECT_TIMEOUT_SECONDS = 5
READ_TIMEOUT_SECONDS = 30
MAX_ATTEMPTS = 3  # botocore's "standard" retry mode: throttling and 5xx, with backoff
UPLOAD_THREADS = 8  # concurrent PUTs of one submit's files
PRESIGNED_SECONDS = 300
# Error codes that mean the store is full (MinIO says so; AWS has no such state).
FULL_CODES = frozenset({"XMinioStorageFull", "QuotaExceeded", "XMinioAdminBucketQuotaExceeded"})
MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → ("bucket", "some/prefix"); a ConfigError otherwise."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ConfigError(
            f"STYLEQUEUE_STORAGE_URL={url!r}: expected s3://BUCKET or s3://BUCKET/PREFIX"
        )
    if parsed.query or parsed.fragment:
        raise ConfigError(f"STYLEQUEUE_STORAGE_URL={url!r}: no query or fragment allowed")
    return parsed.netloc, parsed.path.strip("/")


class S3Storage:
    """Files of jobs as objects ``PREFIX/jobs/<job id>/<name>`` in one bucket."""

    def __init__(self, url: str, *, aws_env: Mapping[str, str] | None = None) -> None:
        """``aws_env``: the AWS variables to use (``Settings.aws_env``); None: this process's."""
        self.url = url
        self._aws = dict(os.environ if aws_env is None else aws_env)
        self.bucket, prefix = parse_s3_url(url)
        self.prefix = f"{prefix}/" if prefix else ""
        self._lock = threading.Lock()
        self._client: tuple[int, Any] | None = None
        self._pool: tuple[int, ThreadPoolExecutor] | None = None

    # -- where things are ------------------------------------------------------------------

    def key(self, job_id: uuid.UUID, name: str) -> str:
        check_name(name)
        return f"{self._job_prefix(job_id)}{name}"

    def _job_prefix(self, job_id: uuid.UUID) -> str:
        return f"{self.prefix}{JOBS_DIR}/{job_id}/"

    def local_path(self, job_id: uuid.UUID, name: str) -> None:
        """Objects have no local path: the API streams them or redirects to them."""
        return None

    def presigned_url(self, job_id: uuid.UUID, name: str) -> str:
        """A URL that lets its holder GET one object for a few minutes, without credentials."""
        url: str = self._s3().generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self.key(job_id, name)},
            ExpiresIn=PRESIGNED_SECONDS,
        )
        return url

    # -- the operations ----------------------------------------------------------------------

    def put(self, job_id: uuid.UUID, name: str, data: bytes, *, durable: bool = True) -> None:
        self.put_many(job_id, {name: data}, durable=durable)

    def put_many(
        self, job_id: uuid.UUID, files: Mapping[str, bytes], *, durable: bool = True
    ) -> None:
        """PUT every file, concurrently; if one fails, the ones written are removed again."""
        keys = {name: self.key(job_id, name) for name in files}
        if len(files) == 1:
            ((name, data),) = files.items()
            self._call(f"could not write {name}", self._put_object, keys[name], data)
            return
        pool = self._threads()
        futures = {name: pool.submit(self._put_object, keys[name], files[name]) for name in files}
        failure: BaseException | None = None
        written = []
        for name, future in futures.items():
            try:
                future.result()
                written.append(keys[name])
            except BaseException as exc:  # noqa: BLE001 - the first one is raised below
                failure = failure or exc
        if failure is not None:
            if written:
                self._quietly(self._delete_keys, written)
            self._raise(failure, f"could not write {', '.join(files)}")

    def get(self, job_id: uuid.UUID, name: str) -> bytes:
        """The bytes of a job file; NotFoundError if there is none, StorageError if unreadable."""
        try:
            data: bytes = self._call(
                f"could not read {name}", self._get_object, self.key(job_id, name)
            )
        except _Missing:
            raise NotFoundError(f"job {job_id} has no {name}") from None
        return data

    def exists(self, job_id: uuid.UUID, name: str) -> bool:
        try:
            self._call(f"could not look for {name}", self._head_object, self.key(job_id, name))
        except _Missing:
            return False
        return True

    def delete(self, job_id: uuid.UUID, name: str) -> None:
        key = self.key(job_id, name)
        self._call(f"could not delete {name}", self._delete_keys, [key])

    def delete_checkpoints(self, job_id: uuid.UUID) -> None:
        """Remove every checkpoint object of a job, of any attempt (best effort, like on disk)."""
        prefix = self._job_prefix(job_id)
        self._quietly(
            self._delete_matching, prefix, lambda n: n == CHECKPOINT_FILE or is_checkpoint(n)
        )

    def delete_job_files(self, job_id: uuid.UUID) -> None:
        """Remove every object of a job (a submit that failed half way, retention)."""
        self._quietly(self._delete_matching, self._job_prefix(job_id), lambda _: True)

    # -- boto3 -------------------------------------------------------------------------------

    def _s3(self) -> Any:
        pid = os.getpid()
        client = self._client
        if client is None or client[0] != pid:
            with self._lock:
                client = self._client
                if client is None or client[0] != pid:
                    client = (pid, self._make_client())
                    self._client = client
        return client[1]

    def _make_client(self) -> Any:
        import boto3
        from botocore.config import Config

        aws = self._aws
        session = boto3.session.Session(
            aws_access_key_id=aws.get("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=aws.get("AWS_SECRET_ACCESS_KEY"),
            aws_session_token=aws.get("AWS_SESSION_TOKEN"),
            profile_name=aws.get("AWS_PROFILE"),
        )
        region = aws.get("AWS_REGION") or aws.get("AWS_DEFAULT_REGION")
        endpoint = aws.get("AWS_ENDPOINT_URL_S3") or aws.get("AWS_ENDPOINT_URL")
        config = Config(
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            read_timeout=READ_TIMEOUT_SECONDS,
            retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
            max_pool_connections=UPLOAD_THREADS * 2,
            s3={"addressing_style": "path"},
        )
        return session.client(
            "s3", region_name=region or "us-east-1", endpoint_url=endpoint, config=config
        )

    def _threads(self) -> ThreadPoolExecutor:
        pid = os.getpid()
        if self._pool is None or self._pool[0] != pid:
            self._pool = (pid, ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="s3-put"))
        return self._pool[1]

    def _put_object(self, key: str, data: bytes) -> None:
        self._s3().put_object(Bucket=self.bucket, Key=key, Body=data)

    def _get_object(self, key: str) -> bytes:
        try:
            response = self._s3().get_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if _code(exc) in MISSING_CODES:
                raise _Missing from None
            raise
        body: bytes = response["Body"].read()
        return body

    def _head_object(self, key: str) -> None:
        try:
            self._s3().head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if _code(exc) in MISSING_CODES:
                raise _Missing from None
            raise

    def _delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            self._s3().delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    def _delete_matching(self, prefix: str, wanted: Any) -> None:
        paginator = self._s3().get_paginator("list_objects_v2")
        keys = [
            item["Key"]
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix)
            for item in page.get("Contents", [])
            if wanted(item["Key"][len(prefix) :])
        ]
        if keys:
            self._delete_keys(keys)

    def _call(self, what: str, function: Any, *args: Any) -> Any:
        try:
            return function(*args)
        except _Missing:
            raise
        except Exception as exc:
            self._raise(exc, what)

    def _quietly(self, function: Any, *args: Any) -> None:
        """Clean-up that must not turn a finished job into an error (as on disk): a leftover
        object costs storage, nothing else."""
        with contextlib.suppress(Exception):
            function(*args)

    def _raise(self, exc: BaseException, what: str) -> Any:
        error = storage_error(exc, what, self.url)
        if error is None:
            raise exc
        raise error from exc


class _Missing(Exception):
    """No such object (a 404), inside this module."""


def _code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def storage_error(exc: BaseException, what: str, url: str) -> StorageError | None:
    """The StorageError that a boto3 failure means, or None for a bug of ours."""
    from botocore.exceptions import BotoCoreError, ClientError

    code = _code(exc)
    details = {"code": code} if code else {}
    if code in FULL_CODES:
        return StorageFullError(
            f"storage full: {what} (the object store {url} refuses new objects); "
            "retry once space has been freed",
            details=details,
        )
    if isinstance(exc, ClientError):
        return StorageUnavailableError(
            f"storage unavailable: {what} (the object store {url} answered {code or 'an error'})",
            details=details,
        )
    if isinstance(exc, BotoCoreError | ConnectionError | TimeoutError):
        return StorageUnavailableError(
            f"storage unavailable: {what} (the object store {url} cannot be reached: "
            f"{type(exc).__name__})",
            details=details,
        )
    return None
