"""The spec's parts for a job's live events and ``Prefer: wait`` (served by ``api.live``)."""

from __future__ import annotations

from typing import Any

from api.spec_parts import error_responses, ref
from api.sse_events import (
    FALLBACK_SECONDS,
    MAX_WAIT_SECONDS,
    PING_SECONDS,
    PROGRESS_INTERVAL_SECONDS,
    QUEUE_SECONDS,
)

PREFER_WAIT: dict[str, Any] = {
    "name": "Prefer",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "example": "wait=30",
    "description": "`wait=N` (RFC 7240): hold the answer until the job has finished or N"
    f" seconds passed (at most {MAX_WAIT_SECONDS}: a larger N is cut to it), then answer"
    " as usual with `Preference-Applied`. A malformed or non-positive wait is ignored.",
}

PREFERENCE_APPLIED: dict[str, Any] = {
    "Preference-Applied": {
        "description": "`wait=N` when the answer was held (N as applied, at most"
        f" {MAX_WAIT_SECONDS}).",
        "schema": {"type": "string"},
        "example": "wait=30",
    }
}

LAST_EVENT_ID: dict[str, Any] = {
    "name": "Last-Event-ID",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "pattern": "^[0-9]+$"},
    "example": "1764657600123",
    "description": "Resume after this event: the job's status is sent first only if it"
    " changed after it, then the stream carries on.",
}

EVENTS_DESCRIPTION = (
    "A `text/event-stream` (server-sent events) of the job's changes, each with an `id:`"
    " that increases (the server's clock in milliseconds). Events:\n\n"
    "- `status`: the job's JSON (`JobOut`), first, and on every change of its status"
    " or attempt;\n"
    "- `progress`: `{iteration, iterations, percent, eta_seconds}` while it runs, at most"
    f" once every {PROGRESS_INTERVAL_SECONDS:g} s;\n"
    "- `preview`: `{url}` of the preview, when a new one is committed;\n"
    "- `queue`: a queued job's `queue` object (`JobQueue`: position, expected start),"
    f" when its position changes (looked at every {QUEUE_SECONDS:g} s);\n"
    "- `done`: the final job JSON (`JobOut`); the stream ends after it. A finished job's"
    " stream is just `done`.\n\n"
    f"A comment line `: ping` comes every {PING_SECONDS:g} s on an idle stream. The"
    " server learns of changes from the workers at once, and re-reads the job at least"
    f" every {FALLBACK_SECONDS:g} s. A server holding as many streams as it can answers"
    " 503 `server_busy` with `Retry-After`."
)


def live_paths(job_id: dict[str, Any]) -> dict[str, Any]:
    """The events path; ``job_id``: the spec's path parameter."""
    return {
        "/v1/jobs/{job_id}/events": {
            "get": {
                "operationId": "getJobEvents",
                "summary": "A job's live events (server-sent events) until it finishes",
                "description": EVENTS_DESCRIPTION,
                "parameters": [job_id, LAST_EVENT_ID],
                "responses": {
                    "200": {
                        "description": "The event stream.",
                        "headers": {
                            "X-Accel-Buffering": {
                                "description": "`no`: a proxy must not buffer the stream.",
                                "schema": {"type": "string"},
                            }
                        },
                        "content": {
                            "text/event-stream": {
                                "schema": {"type": "string"},
                                "example": "id: 1764657600123\nevent: status\n"
                                'data: {"id": "…", "status": "running", …}\n\n'
                                "id: 1764657600650\nevent: progress\n"
                                'data: {"iteration": 40, "iterations": 300, "percent": 13.3,'
                                ' "eta_seconds": 21.5}\n\n',
                                "x-events": {
                                    "status": ref("JobOut"),
                                    "progress": {
                                        "type": "object",
                                        "properties": {
                                            "iteration": {"type": "integer"},
                                            "iterations": {"type": "integer"},
                                            "percent": {"type": "number"},
                                            "eta_seconds": {"type": ["number", "null"]},
                                        },
                                    },
                                    "preview": {
                                        "type": "object",
                                        "properties": {"url": {"type": "string"}},
                                    },
                                    "done": ref("JobOut"),
                                },
                            }
                        },
                    },
                    **error_responses(401, 404, 503),
                },
            }
        }
    }
