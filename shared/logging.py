"""One log format for every stylequeue process (API, worker, scheduler, CLI).

One line per event, with the job's id in it. Human-readable by default::

    2026-11-27 22:43:01,512 INFO 26190 worker.runner: job 7062e67f-… claimed by vm/26190, attempt 1

With ``STYLEQUEUE_LOG_FORMAT=json`` the same lines are JSON objects: ``time``
(UTC, ISO 8601), ``level``, ``logger``, ``pid``, ``message``, and for a job's
events ``job_id`` and ``event`` plus whatever the line adds (``worker``,
``attempt``, ``iteration``, ``error_code``…). A job event passes its fields
with ``extra=job_event(...)``; a line that only formats a job's UUID into its
message still gets ``job_id``.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from shared.settings import DEFAULT_LOG_LEVEL, LogFormat, log_options_from_env

LOG_FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"

# What every LogRecord carries; anything else on a record came from ``extra``.
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
}

_api_log = logging.getLogger("api.jobs")


def configure_logging(level: str | None = None, *, fallback_level: str | int | None = None) -> None:
    """Log to stderr, as text or JSON lines ($STYLEQUEUE_LOG_FORMAT).

    The level: ``level`` if given, else $STYLEQUEUE_LOG_LEVEL, else
    ``fallback_level`` (a Celery worker's ``--loglevel``), else INFO.
    Raises ConfigError naming the variable when one is malformed.
    """
    options = log_options_from_env()
    chosen = level or options["log_level"] or fallback_level or DEFAULT_LOG_LEVEL
    handler = logging.StreamHandler()
    handler.setFormatter(make_formatter(options["log_format"]))
    logging.captureWarnings(True)  # a warning is a log line too (JSON lines stay JSON)
    logging.basicConfig(
        level=chosen.upper() if isinstance(chosen, str) else chosen, handlers=[handler]
    )


def make_formatter(log_format: LogFormat) -> logging.Formatter:
    return JsonLinesFormatter() if log_format == "json" else logging.Formatter(LOG_FORMAT)


class JsonLinesFormatter(logging.Formatter):
    """A record as one JSON object: the fixed keys, then every ``extra`` field."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        job_id = _job_id_in_args(record.args)
        if job_id is not None:
            line["job_id"] = job_id
        line.update(
            (key, value) for key, value in record.__dict__.items() if key not in _RECORD_ATTRIBUTES
        )
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def _job_id_in_args(args: tuple[object, ...] | Mapping[str, object] | None) -> str | None:
    # Lines such as log.warning("job %s ...", job_id) written without job_event.
    values = args.values() if isinstance(args, Mapping) else (args or ())
    for value in values:
        if isinstance(value, uuid.UUID):
            return str(value)
    return None


def job_event(event: str, job_id: uuid.UUID | str, **fields: Any) -> dict[str, Any]:
    """The ``extra`` of a job event's log line: its name, the job's id, and more fields.

    ``log.info("job %s claimed", job_id, extra=job_event("claimed", job_id, attempt=2))``
    """
    return {"event": str(event), "job_id": str(job_id), **fields}


def log_job_created(job_id: uuid.UUID, *, client_id: int, n_styles: int) -> None:
    """The API's line for an accepted job (its row and files are committed)."""
    _api_log.info(
        "job %s created by client %d (%d style image%s)",
        job_id,
        client_id,
        n_styles,
        "" if n_styles == 1 else "s",
        extra=job_event("created", job_id, client_id=client_id),
    )


def log_cancel_requested(job_id: uuid.UUID, *, client_id: int, status: str) -> None:
    """The API's line for a cancel request; ``status`` is the job's state after it."""
    _api_log.info(
        "job %s cancel requested by client %d; now %s",
        job_id,
        client_id,
        status,
        extra=job_event("cancel_requested", job_id, client_id=client_id, status=status),
    )
