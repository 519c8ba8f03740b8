"""Opaque keyset cursors: a position in a newest-first list of jobs."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from shared.errors import InvalidInputError

DEFAULT_PAGE_LIMIT = 20
MAX_PAGE_LIMIT = 100
MAX_CURSOR_LENGTH = 200  # the ones ``encode`` makes are about 100 characters


@dataclass(frozen=True)
class Cursor:
    """The last job of a page: the next page starts strictly after it (older)."""

    created_at: datetime
    job_id: uuid.UUID

    def encode(self) -> str:
        raw = json.dumps([self.created_at.isoformat(), str(self.job_id)], separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> Cursor:
        """Parse a token from ``encode``; anything else is a 400 ``invalid_cursor``."""
        try:
            if len(token) > MAX_CURSOR_LENGTH:
                raise ValueError("longer than any cursor this API makes")
            padded = token + "=" * (-len(token) % 4)
            created, job_id = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
            when = datetime.fromisoformat(created)
            if when.tzinfo is None:
                raise ValueError("naive timestamp")
            when.astimezone(UTC)  # out of range once in UTC (year 1 or 9999)
            return cls(created_at=when, job_id=uuid.UUID(job_id))
        except (
            ValueError,
            TypeError,
            AttributeError,
            OverflowError,
            RecursionError,
            binascii.Error,
            UnicodeError,
        ):
            raise InvalidInputError(
                "cursor: not a cursor returned by this API", field="cursor", code="invalid_cursor"
            ) from None


def parse_limit(raw: str | None) -> int:
    """The page size from a query string: 1..MAX_PAGE_LIMIT, default DEFAULT_PAGE_LIMIT."""
    if raw is None or raw == "":
        return DEFAULT_PAGE_LIMIT
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_PAGE_LIMIT:
        raise InvalidInputError(
            f"limit: must be an integer from 1 to {MAX_PAGE_LIMIT}",
            field="limit",
            code="invalid_limit",
        )
    return value
