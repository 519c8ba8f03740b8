"""Building blocks of /openapi.json shared by the client endpoints (api/openapi.py) and the
admin endpoints (api/admin_schemas.py)."""

from __future__ import annotations

from typing import Any

from shared.pagination import DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT

REF = "#/components/schemas/{model}"

JOB_ID = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
}

LIMIT = {
    "name": "limit",
    "in": "query",
    "schema": {
        "type": "integer",
        "minimum": 1,
        "maximum": MAX_PAGE_LIMIT,
        "default": DEFAULT_PAGE_LIMIT,
    },
}

ERROR_DESCRIPTIONS = {
    400: "Bad input; details.field names the field.",
    401: "No API key, or an unknown one.",
    403: "Not an admin key (admin_required).",
    404: "No such job for this client.",
    409: "The job is not in a state that allows this.",
    413: "An upload or the request is over its size limit.",
    415: "An image in a format other than JPEG, PNG or WebP (unsupported_image_format).",
    422: "The Idempotency-Key was used before with another request (idempotency_key_reused).",
    429: "Over this key's limit: its submit rate (rate_limited) or its queued jobs "
    "(too_many_queued); nothing was stored. Retry after the Retry-After seconds.",
    503: "The database or Redis is unavailable.",
}


def cursor(description: str) -> dict[str, Any]:
    return {
        "name": "cursor",
        "in": "query",
        "schema": {"type": "string"},
        "description": description,
    }


def ref(model: str) -> dict[str, str]:
    return {"$ref": REF.format(model=model)}


def json_response(model: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ref(model)}}}


def error_responses(*statuses: int, **descriptions: str) -> dict[str, Any]:
    """ErrorResponse bodies for ``statuses``; ``descriptions`` overrides by ``s404=...``."""
    return {
        str(s): json_response("ErrorResponse", descriptions.get(f"s{s}", ERROR_DESCRIPTIONS[s]))
        for s in statuses
    }
