"""Settings from the environment, parsed once, failing loudly with the variable's name.

Every default is a named constant with its unit. ``Settings.from_env`` is the
only place that reads ``STYLEQUEUE_*`` variables; everything else takes a
``Settings``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypedDict, TypeVar, cast

from shared.errors import ConfigError
from shared.images import DEFAULT_MAX_IMAGE_PIXELS

ENV_PREFIX = "STYLEQUEUE_"

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_DATA_DIR = "./var"
SQLITE_FILE_NAME = "stylequeue.sqlite3"  # the default database, inside the data dir
DEFAULT_REDIS_PREFIX = "stylequeue:"
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # per uploaded file
# A claimed job is the worker's until then, unless renewed (every heartbeat, from a thread of
# its own): 20 renewals may fail in a row before a live worker lets go, and a dead machine's
# job runs again within lease + reconcile interval (~25 s).
DEFAULT_LEASE_SECONDS = 20.0
DEFAULT_HEARTBEAT_SECONDS = 1.0  # progress write + lease renewal + cancel check, at most this often
DEFAULT_PREVIEW_SECONDS = 5.0  # a preview PNG at most this often
DEFAULT_CHECKPOINT_SECONDS = 30.0  # a resumable engine checkpoint at most this often
# Attempts of one job whose worker died (SIGKILL, OOM, a lost machine) before it fails
# with `too_many_attempts`; attempts handed back on a shutdown do not count.
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_REQUEUE_AFTER_SECONDS = 300.0  # a queued job untouched this long is enqueued again
DEFAULT_RECONCILE_SECONDS = 5.0  # how often the scheduler runs the reconciler
DEFAULT_MAX_RUN_SECONDS = 6 * 3600.0  # one attempt of a job running longer fails with `timeout`
DEFAULT_RETENTION_SECONDS = (
    7 * 24 * 3600.0
)  # a finished job's files are removed after this; 0: kept
DEFAULT_LOG_LEVEL = "INFO"
# Each client's limits unless its own are set (`stylequeue keys update`); 0: no limit. A job
# takes seconds to minutes of a GPU, so a person or a script submitting more than a few a
# second is a runaway loop, not a workload: 20 at once, then 2 a second. 100 waiting jobs is
# more than a small service's workers finish in a while; running jobs are not limited unless
# set, so that one client alone uses every idle worker.
DEFAULT_RATE_LIMIT = 2.0  # submits per second, sustained
DEFAULT_RATE_BURST = 20  # submits at once
DEFAULT_MAX_QUEUED = 100  # a client's jobs waiting for a worker
DEFAULT_MAX_RUNNING = 0  # a client's jobs running at once
# Jobs a worker runs together on its device (one VGG19 pass per iteration for all); 1: none.
# On the CPU a batch gains only for small images (docs/engine.md, "Batches").
DEFAULT_BATCH_MAX = 1
# A worker's cache of recently used styles' Gram targets, MiB (1 MiB = 2**20 bytes), when
# STYLEQUEUE_STYLE_CACHE_MB is unset; one style at one pass size holds ~2.3 MiB (VGG19's five
# style layers), so these keep ~100 and ~27 of them.
DEFAULT_STYLE_CACHE_MB_GPU = 256
DEFAULT_STYLE_CACHE_MB_CPU = 64
MIB = 1024 * 1024

Device = Literal["auto", "cpu", "cuda"]
Weights = Literal["caffe", "torchvision"]
LogFormat = Literal["text", "json"]
# Whose earlier jobs an exact repeat may be served from (shared.result_cache): the same
# client's only, or any client's.
CacheScope = Literal["client", "global"]
CACHE_SCOPES: tuple[CacheScope, ...] = ("client", "global")
DEFAULT_LOG_FORMAT: LogFormat = "text"  # a human-readable line per event; "json": JSON lines
DEVICES: tuple[Device, ...] = ("auto", "cpu", "cuda")
WEIGHTS: tuple[Weights, ...] = ("caffe", "torchvision")
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    """Everything configurable about a stylequeue process."""

    database_url: str
    redis_url: str = DEFAULT_REDIS_URL
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    storage_url: str | None = None  # s3://BUCKET/PREFIX; None: job files under the data dir
    storage_redirect: bool = False  # results and previews: 303 to a presigned URL (S3 only)
    # The standard AWS variables of the same environment (credentials, region, endpoint), for
    # the S3 store; none set: boto3's own chain (~/.aws, an instance's role).
    aws_env: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    admin_key: str | None = None
    secret_key: str | None = None  # signs /admin session cookies; None: a file in the data dir
    metrics_key: str | None = None  # None: /metrics is open (scraped on an internal network)
    redis_prefix: str = DEFAULT_REDIS_PREFIX
    # The master's name the sentinels know, with a sentinel:// redis_url (shared/redis_conn.py).
    redis_sentinel_master: str | None = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    device: Device = "auto"
    weights: Weights = "caffe"
    torchvision_weights_path: Path | None = None
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS
    preview_seconds: float = DEFAULT_PREVIEW_SECONDS
    checkpoint_seconds: float = DEFAULT_CHECKPOINT_SECONDS
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    requeue_after_seconds: float = DEFAULT_REQUEUE_AFTER_SECONDS
    reconcile_seconds: float = DEFAULT_RECONCILE_SECONDS
    max_run_seconds: float = DEFAULT_MAX_RUN_SECONDS
    retention_seconds: float = DEFAULT_RETENTION_SECONDS
    log_level: str | None = None  # None: DEFAULT_LOG_LEVEL, or a Celery worker's --loglevel
    log_format: LogFormat = DEFAULT_LOG_FORMAT
    # Every client's limits unless its own are set (shared.client_limits); 0: no limit.
    rate_limit: float = DEFAULT_RATE_LIMIT
    rate_burst: int = DEFAULT_RATE_BURST
    max_queued: int = DEFAULT_MAX_QUEUED
    max_running: int = DEFAULT_MAX_RUNNING
    cache_scope: CacheScope = "client"  # the result cache serves a client from its own jobs
    # The worker's cache of style Gram targets, MiB; None: by device (style_cache_bytes); 0: off.
    style_cache_mb: int | None = None
    # The most memory (MiB) a job's estimate may need for this worker to claim it;
    # None: the device's memory less a reserve (shared.memory_estimate.worker_budget_bytes).
    worker_memory_mb: float | None = None
    # The most jobs a worker runs together on its device (worker.batch_runner); 1: one at a time.
    batch_max: int = DEFAULT_BATCH_MAX

    def __post_init__(self) -> None:
        # Settings built in code get the same absolute data dir as those from the environment.
        object.__setattr__(self, "data_dir", Path(self.data_dir).resolve())

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build the settings from ``environ`` (default: ``os.environ``).

        Raises ConfigError naming the variable when a value is malformed.
        """
        env = os.environ if environ is None else environ
        reader = _EnvReader(env)
        # Absolute once, here: a relative path would mean another directory to any
        # code that resolves it against something else than this process's working
        # directory (Flask's send_file takes it relative to the app's package).
        data_dir = Path(reader.get("DATA_DIR", DEFAULT_DATA_DIR, str)).resolve()
        default_db = f"sqlite:///{data_dir / SQLITE_FILE_NAME}"
        tv_path = reader.get("TORCHVISION_WEIGHTS", "", str)
        redis_url = reader.get("REDIS_URL", DEFAULT_REDIS_URL, _redis_url)
        sentinel_master = reader.get("REDIS_SENTINEL_MASTER", "", str) or None
        _check_sentinel_master(redis_url, sentinel_master)
        return cls(
            database_url=reader.get("DATABASE_URL", default_db, _url),
            redis_url=redis_url,
            data_dir=data_dir,
            storage_url=reader.get("STORAGE_URL", "", _storage_url) or None,
            storage_redirect=reader.get("STORAGE_REDIRECT", False, _bool),
            aws_env=tuple((name, env[name]) for name in AWS_VARIABLES if env.get(name)),
            admin_key=reader.get("ADMIN_KEY", "", str) or None,
            secret_key=reader.get("SECRET_KEY", "", str) or None,
            metrics_key=reader.get("METRICS_KEY", "", str) or None,
            redis_prefix=reader.get("REDIS_PREFIX", DEFAULT_REDIS_PREFIX, str),
            redis_sentinel_master=sentinel_master,
            max_upload_bytes=reader.get(
                "MAX_UPLOAD_BYTES", DEFAULT_MAX_UPLOAD_BYTES, _positive_int
            ),
            max_image_pixels=reader.get(
                "MAX_IMAGE_PIXELS", DEFAULT_MAX_IMAGE_PIXELS, _positive_int
            ),
            device=cast(Device, reader.get("DEVICE", "auto", _choice(DEVICES))),
            weights=cast(Weights, reader.get("WEIGHTS", "caffe", _choice(WEIGHTS))),
            torchvision_weights_path=Path(tv_path) if tv_path else None,
            lease_seconds=reader.get("LEASE_SECONDS", DEFAULT_LEASE_SECONDS, _positive_float),
            heartbeat_seconds=reader.get(
                "HEARTBEAT_SECONDS", DEFAULT_HEARTBEAT_SECONDS, _positive_float
            ),
            preview_seconds=reader.get("PREVIEW_SECONDS", DEFAULT_PREVIEW_SECONDS, _positive_float),
            checkpoint_seconds=reader.get(
                "CHECKPOINT_SECONDS", DEFAULT_CHECKPOINT_SECONDS, _positive_float
            ),
            max_attempts=reader.get("MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS, _positive_int),
            requeue_after_seconds=reader.get(
                "REQUEUE_AFTER_SECONDS", DEFAULT_REQUEUE_AFTER_SECONDS, _positive_float
            ),
            reconcile_seconds=reader.get(
                "RECONCILE_SECONDS", DEFAULT_RECONCILE_SECONDS, _positive_float
            ),
            max_run_seconds=reader.get("MAX_RUN_SECONDS", DEFAULT_MAX_RUN_SECONDS, _positive_float),
            retention_seconds=reader.get(
                "RETENTION_SECONDS", DEFAULT_RETENTION_SECONDS, _non_negative_float
            ),
            style_cache_mb=reader.get("STYLE_CACHE_MB", None, _non_negative_int),
            worker_memory_mb=reader.get("WORKER_MEMORY_MB", None, _positive_float),
            batch_max=reader.get("BATCH_MAX", DEFAULT_BATCH_MAX, _positive_int),
            rate_limit=reader.get("RATE_LIMIT", DEFAULT_RATE_LIMIT, _limit_float),
            rate_burst=reader.get("RATE_BURST", DEFAULT_RATE_BURST, _limit_int),
            max_queued=reader.get("MAX_QUEUED", DEFAULT_MAX_QUEUED, _limit_int),
            max_running=reader.get("MAX_RUNNING", DEFAULT_MAX_RUNNING, _limit_int),
            cache_scope=cast(
                CacheScope, reader.get("CACHE_SCOPE", "client", _choice(CACHE_SCOPES))
            ),
            **log_options_from_env(env),
        )

    def style_cache_bytes(self, device_type: str) -> int:
        """The bytes a worker on a ``device_type`` device ("cuda", "cpu") may keep of style
        Gram targets: STYLEQUEUE_STYLE_CACHE_MB, else the device's default; 0: no cache."""
        mb = self.style_cache_mb
        if mb is None:
            mb = DEFAULT_STYLE_CACHE_MB_GPU if device_type == "cuda" else DEFAULT_STYLE_CACHE_MB_CPU
        return mb * MIB

    @property
    def max_request_bytes(self) -> int:
        """The whole multipart request: every file at its limit plus room for the form fields."""
        from shared.params import MAX_STYLES

        return self.max_upload_bytes * (MAX_STYLES + 1) + FORM_OVERHEAD_BYTES


# What the S3 store reads of the environment (boto3's names).
AWS_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_PROFILE",
)
FORM_OVERHEAD_BYTES = 1024 * 1024  # multipart boundaries, headers and the params JSON


class LogOptions(TypedDict):
    log_level: str | None
    log_format: LogFormat


def log_options_from_env(environ: Mapping[str, str] | None = None) -> LogOptions:
    """Just the logging settings: a process configures its logging before anything else.

    ``log_level`` is None when STYLEQUEUE_LOG_LEVEL is unset, so that a process
    with a level of its own (Celery's ``--loglevel``) can tell.
    """
    reader = _EnvReader(os.environ if environ is None else environ)
    return {
        "log_level": reader.get("LOG_LEVEL", None, _log_level),
        "log_format": cast(
            LogFormat, reader.get("LOG_FORMAT", str(DEFAULT_LOG_FORMAT), _choice(LOG_FORMATS))
        ),
    }


class _EnvReader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def get(self, name: str, default: T, parse: Callable[[str], T]) -> T:
        variable = ENV_PREFIX + name
        raw = self._env.get(variable)
        if raw is None or raw.strip() == "":
            return default
        try:
            return parse(raw.strip())
        except ValueError as exc:
            raise ConfigError(
                f"{variable}={raw!r} is malformed: {exc}", details={"variable": variable}
            ) from None


def _url(raw: str) -> str:
    if "://" not in raw:
        raise ValueError("expected a URL such as postgresql+psycopg://user@host/db")
    return raw


def _redis_url(raw: str) -> str:
    from shared.redis_conn import is_sentinel_url, parse_sentinel_url

    if is_sentinel_url(raw):
        parse_sentinel_url(raw)  # a ValueError says what is wrong with it
    elif not raw.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(
            "expected a redis://, rediss:// or unix:// URL, "
            "or sentinel://HOST:PORT;sentinel://HOST:PORT;... for Redis Sentinel"
        )
    return raw


def _check_sentinel_master(redis_url: str, master: str | None) -> None:
    from shared.redis_conn import is_sentinel_url

    variable = ENV_PREFIX + "REDIS_SENTINEL_MASTER"
    if is_sentinel_url(redis_url) and master is None:
        raise ConfigError(
            f"{variable} is required with a sentinel:// {ENV_PREFIX}REDIS_URL: the name of "
            "the master the sentinels watch (their 'sentinel monitor NAME ...')",
            details={"variable": variable},
        )
    if master is not None and not is_sentinel_url(redis_url):
        raise ConfigError(
            f"{variable} is set, but {ENV_PREFIX}REDIS_URL is no sentinel:// URL: "
            "unset it, or list the sentinels in the URL",
            details={"variable": variable},
        )


def _storage_url(raw: str) -> str:
    if not raw.startswith("s3://") or len(raw) <= len("s3://"):
        raise ValueError("expected s3://BUCKET or s3://BUCKET/PREFIX (unset: the data dir)")
    return raw


TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def _bool(raw: str) -> bool:
    word = raw.lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"must be one of {', '.join(TRUE_WORDS + FALSE_WORDS)}")


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must be an integer, 0 or more")
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError("must be a positive number")
    return value


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if not value >= 0:
        raise ValueError("must be a number, 0 or more")
    return value


def _limit_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must be a whole number, 0 or more (0: no limit)")
    return value


def _limit_float(raw: str) -> float:
    value = float(raw)
    if not (value >= 0 and value != float("inf")):
        raise ValueError("must be a number, 0 or more (0: no limit)")
    return value


def _log_level(raw: str) -> str:
    level = raw.upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
    return level


def _choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return raw

    return parse
