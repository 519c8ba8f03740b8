"""How the admin front ends read a query string: one parser for the JSON API and the page.

``parse_job_query`` reads the job list's filters, page size and cursor;
``parse_hours`` the statistics window; ``parse_flag`` a true/false switch;
``parse_job_ids`` a repeated job id; ``parse_id_search`` the search box's job id
(or its beginning); ``parse_bulk_action`` a bulk action's name. The two front ends differ only in the name
of the client filter, which each passes in (the page's is ``client``, the JSON
API's ``client_id``; both are part of their URLs). ``filter_pairs`` writes
filters back as query pairs, for the page's links.

Every bad value is an InvalidInputError (400) that names its field, raised
before anything reaches the database.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from shared.admin import JobFilters
from shared.errors import InvalidInputError
from shared.models import WORKER_LENGTH, JobStatus
from shared.pagination import Cursor, parse_limit
from shared.stats import DEFAULT_STATS_HOURS, MAX_STATS_HOURS

API_CLIENT_FIELD = "client_id"  # the JSON API's name for the client filter
PAGE_CLIENT_FIELD = "client"  # the page's

MAX_ID = 2**31 - 1  # an INTEGER column: a larger id would be a database error, not a miss
MAX_NUMBER_DIGITS = 10
MAX_TIME_LENGTH = 64
SHOWN_CHARACTERS = 40  # of a rejected value, in the error message
_DIGITS = re.compile(r"[0-9]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class QueryArgs(Protocol):
    """A query string as Werkzeug's MultiDict gives it."""

    def get(self, key: str) -> str | None: ...
    def getlist(self, key: str) -> list[str]: ...


def shown(raw: str) -> str:
    """A rejected value as an error message quotes it: repr'd, and cut when long."""
    if len(raw) <= SHOWN_CHARACTERS:
        return repr(raw)
    return repr(raw[:SHOWN_CHARACTERS]) + f"… ({len(raw)} characters)"


def parse_statuses(args: QueryArgs) -> tuple[JobStatus, ...]:
    """The ``status`` filter, repeated and/or comma-separated, in JobStatus order;
    an unknown status is a 400 ``invalid_status``."""
    chosen: set[JobStatus] = set()
    for raw in args.getlist("status"):
        for part in filter(None, (p.strip() for p in raw.split(","))):
            try:
                chosen.add(JobStatus(part))
            except ValueError:
                raise InvalidInputError(
                    f"status: {shown(part)} is not one of {', '.join(s.value for s in JobStatus)}",
                    field="status",
                    code="invalid_status",
                ) from None
    return tuple(s for s in JobStatus if s in chosen)


def parse_whole_number(
    raw: str | None, *, field: str, low: int, high: int, code: str
) -> int | None:
    """A whole number ``low``..``high`` written in ASCII digits (no sign, no ``_``, no
    other script's digits); None when absent or empty; otherwise a 400 naming ``field``."""
    if raw is None or raw.strip() == "":
        return None
    text = raw.strip()
    if _DIGITS.fullmatch(text) and len(text) <= MAX_NUMBER_DIGITS and low <= int(text) <= high:
        return int(text)
    raise InvalidInputError(
        f"{field}: {shown(raw)} is not a whole number from {low} to {high}",
        field=field,
        code=code,
    )


def parse_hours(raw: str | None) -> int:
    """The statistics window (``hours``): 1..MAX_STATS_HOURS, DEFAULT_STATS_HOURS when absent."""
    hours = parse_whole_number(
        raw, field="hours", low=1, high=MAX_STATS_HOURS, code="invalid_hours"
    )
    return DEFAULT_STATS_HOURS if hours is None else hours


def parse_worker(raw: str | None, *, field: str = "worker") -> str | None:
    """A worker name as the jobs show it: at most WORKER_LENGTH characters, no control
    characters (PostgreSQL refuses NUL in text); None when absent or empty."""
    if raw is None or raw.strip() == "":
        return None
    text = raw.strip()
    if len(text) > WORKER_LENGTH or _CONTROL.search(text):
        raise InvalidInputError(
            f"{field}: {shown(raw)} is not a worker name (at most {WORKER_LENGTH} "
            "characters, no control characters)",
            field=field,
            code="invalid_worker",
        )
    return text


def parse_time(raw: str | None, *, field: str) -> datetime | None:
    """An ISO 8601 time with a zone (``Z`` or ``+01:00``), in UTC; None when absent or empty."""
    if raw is None or raw.strip() == "":
        return None
    # A "+" left unencoded in a query string arrives as a space: "…T00:00:00 01:00".
    text = re.sub(r" (\d\d(:?\d\d)?)$", r"+\1", raw.strip())
    value: datetime | None = None
    if len(text) <= MAX_TIME_LENGTH and not _CONTROL.search(text):
        try:
            value = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if value.tzinfo is not None:
                value = value.astimezone(UTC)  # out of range once in UTC (year 1 or 9999)
        except (ValueError, OverflowError):
            value = None
    if value is None or value.tzinfo is None:
        raise InvalidInputError(
            f"{field}: must be an ISO 8601 time with a zone, e.g. 2026-11-28T00:00:00Z",
            field=field,
            code="invalid_time",
        )
    return value


def parse_job_filters(args: QueryArgs, *, client_field: str) -> JobFilters:
    """The job list's filters from a query string: ``status`` (repeated or comma-separated),
    ``client_field`` (a client id), ``worker``, ``created_from`` (inclusive) and
    ``created_to`` (exclusive, later than ``created_from``). Every bad value is a 400
    naming its field; nothing that reaches the database can make it fail."""
    statuses = parse_statuses(args)
    client_id = parse_whole_number(
        args.get(client_field), field=client_field, low=1, high=MAX_ID, code="invalid_client_id"
    )
    worker = parse_worker(args.get("worker"))
    created_from = parse_time(args.get("created_from"), field="created_from")
    created_to = parse_time(args.get("created_to"), field="created_to")
    if created_from is not None and created_to is not None and created_to <= created_from:
        raise InvalidInputError(
            "created_to: must be later than created_from",
            field="created_to",
            code="invalid_time_range",
        )
    return JobFilters(
        statuses=statuses,
        client_id=client_id,
        worker=worker,
        created_from=created_from,
        created_to=created_to,
    )


@dataclass(frozen=True)
class JobQuery:
    """A job list request: which jobs, how many, from where."""

    filters: JobFilters
    limit: int
    cursor: Cursor | None


def job_query_fields(*, client_field: str) -> frozenset[str]:
    """The names ``parse_job_query`` reads."""
    return frozenset(
        {"status", client_field, "worker", "created_from", "created_to", "limit", "cursor"}
    )


def parse_job_query(args: QueryArgs, *, client_field: str) -> JobQuery:
    """The job list's filters (``parse_job_filters``), then ``limit`` and ``cursor``."""
    filters = parse_job_filters(args, client_field=client_field)
    limit = parse_limit(args.get("limit"))
    raw_cursor = args.get("cursor")
    return JobQuery(filters, limit, Cursor.decode(raw_cursor) if raw_cursor else None)


def filter_pairs(filters: JobFilters, *, client_field: str) -> list[tuple[str, str]]:
    """``filters`` as query pairs that ``parse_job_filters`` reads back to the same filters."""
    pairs: list[tuple[str, str]] = [("status", s.value) for s in filters.statuses]
    if filters.client_id is not None:
        pairs.append((client_field, str(filters.client_id)))
    if filters.worker:
        pairs.append(("worker", filters.worker))
    for name, value in (("created_from", filters.created_from), ("created_to", filters.created_to)):
        if value is not None:
            pairs.append((name, value.isoformat().replace("+00:00", "Z")))
    return pairs


def reject_unknown(names: Iterable[str], known: frozenset[str]) -> None:
    """A 400 ``unknown_parameter`` naming the first (alphabetically) of ``names`` not in
    ``known``."""
    unknown = sorted(set(names) - known)
    if unknown:
        raise InvalidInputError(
            f"{unknown[0]}: unknown query parameter; known: {', '.join(sorted(known))}",
            field=unknown[0],
            code="unknown_parameter",
        )


def parse_flag(raw: str | None, *, field: str) -> bool:
    """true/false (or 1/0, any case); false when absent or empty."""
    text = (raw or "false").lower()
    if text not in ("true", "false", "1", "0"):
        raise InvalidInputError(
            f"{field}: must be true or false", field=field, code=f"invalid_{field}"
        )
    return text in ("true", "1")


def parse_job_ids(args: QueryArgs, *, field: str, at_most: int) -> list[uuid.UUID]:
    """The first ``at_most`` values of a repeated job id parameter."""
    ids: list[uuid.UUID] = []
    for raw in args.getlist(field)[:at_most]:
        try:
            ids.append(uuid.UUID(raw))
        except ValueError:
            raise InvalidInputError(f"{field}: {raw!r} is not a job id", field=field) from None
    return ids


_HEX = re.compile(r"[0-9a-f]{1,32}")


def parse_id_search(raw: str | None, *, field: str = "q") -> str | None:
    """A job id or its beginning, as a search box takes it: with or without dashes, any
    case, spaces around ignored; the hex digits (1 to 32, lowercase) or None when empty."""
    if raw is None or raw.strip() == "":
        return None
    digits = raw.strip().lower().replace("-", "")
    if not _HEX.fullmatch(digits):
        raise InvalidInputError(
            f"{field}: {shown(raw)} is not a job id or the beginning of one (hex digits)",
            field=field,
            code="invalid_job_search",
        )
    return digits


BULK_ACTIONS = ("retry", "cancel")


def parse_bulk_action(raw: str | None) -> str:
    """``retry`` (the failed jobs of a filter) or ``cancel`` (its queued ones)."""
    if raw not in BULK_ACTIONS:
        raise InvalidInputError(
            f"action: {shown(raw or '')} is not one of {', '.join(BULK_ACTIONS)}",
            field="action",
            code="invalid_action",
        )
    return raw
