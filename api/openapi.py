"""``/openapi.json``, generated from the pydantic models that validate and serialise (``/docs``
draws it: ``api.docs_page``)."""

from __future__ import annotations

from functools import cache
from typing import Any

from flask import Blueprint, Response, jsonify
from pydantic.json_schema import models_json_schema

from api import webhooks
from api.admin_schemas import ADMIN_MODELS, admin_paths
from api.limits import MAX_CANCEL_AFTER_SECONDS
from api.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from api.schemas import ErrorResponse, Health, JobList, JobOut
from api.spec_examples import with_examples
from api.spec_live import PREFER_WAIT, PREFERENCE_APPLIED, live_paths
from api.spec_parts import (
    JOB_ID,
    LIMIT,
    REF,
    cursor,
    error_responses,
    json_response,
    ref,
)
from api.uploads import IDEMPOTENCY_KEY_MAX_LENGTH
from shared.models import JobStatus
from shared.params import MAX_STYLES, StyleParams

blueprint = Blueprint("openapi", __name__)

API_TITLE = "stylequeue"
API_VERSION = "1.0.0"
PNG = {"image/png": {"schema": {"type": "string", "format": "binary"}}}
CANCEL_AFTER = {
    "name": "Cancel-After",
    "in": "header",
    "required": False,
    "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_CANCEL_AFTER_SECONDS},
    "description": "Seconds: a job not finished this long after the submit is canceled, "
    "its error deadline_exceeded (queued or running); the job shows it as deadline_at. "
    "Anything but a positive number is a 400 (invalid_cancel_after).",
}
# draft-ietf-httpapi-ratelimit-headers, structured fields; docs/limits.md has an example.
RATE_HEADERS = {
    "Retry-After": {
        "description": "Seconds to wait before submitting again.",
        "schema": {"type": "integer", "minimum": 1},
    },
    "RateLimit-Policy": {
        "description": 'This key\'s quotas: "burst";q=BURST;w=SECONDS (submits at once, '
        'refilled at the rate in w seconds) and "queued";q=MAX_QUEUED, each when set.',
        "schema": {"type": "string"},
        "example": '"burst";q=20;w=10, "queued";q=100',
    },
    "RateLimit": {
        "description": 'Where this key stands: "burst";r=LEFT;t=SECONDS (submits left now, '
        'seconds until the bucket is full) and "queued";r=LEFT (jobs it may still queue).',
        "schema": {"type": "string"},
        "example": '"burst";r=19;t=1, "queued";r=99',
    },
}


@blueprint.get("/openapi.json")
def openapijson_response() -> Response:
    return jsonify(openapi_spec())


@cache
def openapi_spec() -> dict[str, Any]:
    """The OpenAPI 3.1 document; its schemas are the pydantic models' own JSON schemas."""
    _, top = models_json_schema(
        [
            (StyleParams, "validation"),
            (JobOut, "serialization"),
            (JobList, "serialization"),
            (ErrorResponse, "serialization"),
            (Health, "serialization"),
            *((model, "serialization") for model in ADMIN_MODELS),
        ],
        ref_template=REF,
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": API_TITLE,
            "version": API_VERSION,
            "description": "Neural style transfer as asynchronous jobs. Submit a content photo and "
            "style images, poll the job, download the result.",
        },
        "components": {
            "schemas": top["$defs"],
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer"},
                "metricsKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "STYLEQUEUE_METRICS_KEY, needed by /metrics only when set.",
                },
            },
        },
        "security": [{"bearerAuth": []}],
        "paths": with_examples(_paths() | admin_paths()),
    }


def _paths() -> dict[str, Any]:
    job = json_response("JobOut", "The job.")
    return {
        "/v1/jobs": {
            "post": {
                "operationId": "submitJob",
                "summary": "Submit a style-transfer job",
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "maxLength": IDEMPOTENCY_KEY_MAX_LENGTH},
                        "description": "The same key with the same request again returns"
                        " the original job (200); with another request it is a 422.",
                    },
                    CANCEL_AFTER,
                    PREFER_WAIT,
                ],
                "requestBody": {
                    "required": True,
                    "content": {"multipart/form-data": _submission()},
                },
                "responses": {
                    "202": {
                        **job,
                        "description": "Accepted: stored durably and queued, or, for an exact"
                        " repeat served from the result cache, already succeeded.",
                        "headers": {k: RATE_HEADERS[k] for k in ("RateLimit-Policy", "RateLimit")}
                        | PREFERENCE_APPLIED,
                    },
                    "200": {**job, "description": "The job created earlier with this key."},
                    **error_responses(
                        400,
                        401,
                        413,
                        415,
                        422,
                        429,
                        503,
                        s503="The database or Redis is unavailable, or the storage is full or"
                        " unavailable (storage_full, storage_unavailable); nothing was stored."
                        " Retry after the Retry-After seconds.",
                    ),
                    "429": {**error_responses(429)["429"], "headers": RATE_HEADERS},
                },
            },
            "get": {
                "operationId": "listJobs",
                "summary": "The caller's jobs, newest first",
                "parameters": [
                    {
                        "name": "status",
                        "in": "query",
                        "schema": {"type": "string", "enum": [s.value for s in JobStatus]},
                    },
                    LIMIT,
                    cursor("next_cursor of the previous page."),
                ],
                "responses": {
                    "200": json_response("JobList", "A page of jobs."),
                    **error_responses(400, 401),
                },
            },
        },
        "/v1/jobs/{job_id}": {
            "get": {
                "operationId": "getJob",
                "summary": "A job",
                "parameters": [JOB_ID, PREFER_WAIT],
                "responses": {
                    "200": {**job, "headers": PREFERENCE_APPLIED},
                    **error_responses(401, 404),
                },
            }
        },
        **live_paths(JOB_ID),
        "/v1/jobs/{job_id}/cancel": {
            "post": {
                "operationId": "cancelJob",
                "summary": "Cancel a queued or running job (idempotent)",
                "parameters": [JOB_ID],
                "responses": {"200": job, **error_responses(401, 404)},
            }
        },
        "/v1/jobs/{job_id}/result": {
            "get": {
                "operationId": "getResult",
                "summary": "The stylized image, once the job has succeeded",
                "parameters": [JOB_ID],
                "responses": {
                    "200": {"description": "The result PNG.", "content": PNG},
                    **error_responses(401, 404, 409),
                },
            }
        },
        "/v1/jobs/{job_id}/preview": {
            "get": {
                "operationId": "getPreview",
                "summary": "The latest intermediate image of a running job",
                "parameters": [JOB_ID],
                "responses": {
                    "200": {"description": "The preview PNG.", "content": PNG},
                    **error_responses(401, 404),
                },
            }
        },
        **webhooks.spec_paths(JOB_ID, error_responses(401, 404)),
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "Liveness",
                "security": [],
                "responses": {"200": json_response("Health", "The process is up.")},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Readiness: the database and Redis answer",
                "security": [],
                "responses": {"200": json_response("Health", "Ready."), **error_responses(503)},
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics: jobs by status, wait and run times, workers,"
                " the backlog, the broker's queues",
                "description": "Open unless STYLEQUEUE_METRICS_KEY is set; then that key is"
                " needed as a bearer token.",
                "security": [{}, {"metricsKey": []}],
                "responses": {
                    "200": {
                        "description": "Prometheus' text exposition format 0.0.4.",
                        "content": {METRICS_CONTENT_TYPE: {"schema": {"type": "string"}}},
                    },
                    **error_responses(
                        401,
                        s401="STYLEQUEUE_METRICS_KEY is set and another key or none was sent"
                        " (invalid_api_key).",
                    ),
                },
            }
        },
    }


def _submission() -> dict[str, Any]:
    binary = {"type": "string", "format": "binary"}
    return {
        "schema": {
            "type": "object",
            "required": ["content", "style"],
            "properties": {
                "content": {**binary, "description": "The content photo: JPEG, PNG or WebP."},
                "style": {
                    "type": "array",
                    "items": binary,
                    "minItems": 1,
                    "maxItems": MAX_STYLES,
                    "description": "Style images (JPEG, PNG or WebP), in style_blend order.",
                },
                "params": {
                    **ref("StyleParams"),
                    "description": "JSON text, as a field or a file part; omitted fields get"
                    " their defaults.",
                },
                "cache": {
                    "type": "string",
                    "enum": ["true", "false"],
                    "default": "true",
                    "description": "true: an exact repeat of an earlier succeeded job (the same"
                    " input bytes, parameters, engine version and weights) is answered"
                    " succeeded at once with a copy of its result (cached: true); false: the"
                    " job is computed. Anything else is a 400 (invalid_cache).",
                },
                "priority": {
                    "type": "integer",
                    "minimum": -10,
                    "maximum": 10,
                    "default": 0,
                    "description": "Orders this client's own queued jobs: higher first, then"
                    " oldest first. Other clients' jobs are ordered by fair share, not by it."
                    " Anything else is a 400 (invalid_priority).",
                },
                **webhooks.SUBMIT_FIELDS,
            },
        },
        "encoding": {"params": {"contentType": "application/json"}},
    }
