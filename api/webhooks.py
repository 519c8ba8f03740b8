"""A job's webhook options at submit, and its delivery log (``GET /v1/jobs/{id}/webhooks``)."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response
from sqlalchemy import select

from api.auth import current_principal
from api.multipart import Form
from api.services import read_session
from shared import job_store, webhook_outbox
from shared.errors import InvalidInputError
from shared.job_store import parse_job_id
from shared.models import ApiClient
from shared.webhooks import WebhookRequest, parse_request

blueprint = Blueprint("webhooks", __name__, url_prefix="/v1/jobs")


def _one_field(form: Form, name: str) -> str | None:
    if name in form.files:
        raise InvalidInputError(
            f"{name}: sent as a file; send it as a text field", field=name, code="invalid_webhook"
        )
    values = form.fields.get(name, [])
    if len(values) > 1:
        raise InvalidInputError(
            f"{name}: send one {name} field", field=name, code="invalid_webhook"
        )
    return values[0] if values else None


def read_webhook_fields(form: Form, client_id: int) -> WebhookRequest | None:
    """The form fields ``webhook`` and ``webhook_events``, checked (a 400 ``invalid_webhook``
    naming the reason, before anything is stored); None without a ``webhook``."""
    webhook = parse_request(_one_field(form, "webhook"), _one_field(form, "webhook_events"))
    if webhook is not None:
        secret = read_session().scalar(
            select(ApiClient.webhook_secret).where(ApiClient.id == client_id)
        )
        if secret is None:
            raise InvalidInputError(
                "webhook: this client has no webhook signing secret yet; an operator makes "
                "one with `stylequeue keys rotate-webhook-secret NAME`",
                field="webhook",
                code="invalid_webhook",
                details={"reason": "no_secret"},
            )
    return webhook


@blueprint.get("/<job_id>/webhooks")
def list_webhooks(job_id: str) -> Response:
    """The job's webhook deliveries, oldest first, each with its attempts."""
    principal = current_principal()
    session = read_session()
    job = job_store.get_job(session, parse_job_id(job_id), client_id=principal.client_id)
    deliveries = webhook_outbox.list_deliveries(session, job.id)
    body = {"deliveries": [webhook_outbox.delivery_dict(d) for d in deliveries]}
    return Response(json.dumps(body, separators=(",", ":")), mimetype="application/json")


# ---------------------------------------------------------------- /openapi.json

_AT = {"type": ["string", "null"], "format": "date-time"}
_ATTEMPT = {
    "type": "object",
    "required": ["at", "status_code", "error", "seconds", "redelivered_by"],
    "properties": {
        "at": {"type": "string", "format": "date-time"},
        "status_code": {
            "type": ["integer", "null"],
            "description": "The receiver's answer; null: none (refused, timed out, refused"
            " address).",
        },
        "error": {"type": ["string", "null"], "description": "null: delivered."},
        "seconds": {"type": ["number", "null"]},
        "redelivered_by": {
            "type": ["string", "null"],
            "description": "Set on an operator's redelivery from /admin (not an attempt).",
        },
    },
}
DELIVERY_SCHEMA: dict[str, object] = {
    "type": "object",
    "required": [
        "id",
        "event",
        "url",
        "state",
        "attempts",
        "created_at",
        "next_attempt_at",
        "last_attempt_at",
        "delivered_at",
        "status_code",
        "error",
        "log",
    ],  # fmt: skip
    "properties": {
        "id": {"type": "string", "description": "The webhook-id header of every attempt."},
        "event": {"type": "string", "enum": ["start", "progress", "completed"]},
        "url": {"type": "string"},
        "state": {
            "type": "string",
            "enum": ["pending", "delivered", "failed"],
            "description": "failed: given up (the last attempt, 24 h after the event, failed too).",
        },
        "attempts": {"type": "integer", "minimum": 0},
        "created_at": {"type": "string", "format": "date-time"},
        "next_attempt_at": _AT,
        "last_attempt_at": _AT,
        "delivered_at": _AT,
        "status_code": {"type": ["integer", "null"]},
        "error": {"type": ["string", "null"]},
        "log": {"type": "array", "items": _ATTEMPT},
    },
}
SUBMIT_FIELDS: dict[str, object] = {
    "webhook": {
        "type": "string",
        "format": "uri",
        "maxLength": 2000,
        "description": "An http(s) URL that gets a POST of the job's JSON at each of"
        " webhook_events, signed the Standard Webhooks way (webhook-id, webhook-timestamp,"
        " webhook-signature: v1,<base64 HMAC-SHA256 of id.timestamp.body>) with the key's"
        " whsec_ secret; retried with backoff for 24 h on any non-2xx or timeout. A host that"
        " resolves to a loopback, private or link-local address is a 400 (invalid_webhook)"
        " unless the service allows it.",
    },
    "webhook_events": {
        "type": "string",
        "default": "completed",
        "description": "Comma-separated, of start (claimed by a worker), progress (at most"
        " every 2 s) and completed (succeeded, failed or canceled). Anything else is a 400"
        " (invalid_webhook).",
    },
}


def spec_paths(job_id: dict[str, Any], errors: dict[str, Any]) -> dict[str, Any]:
    """The delivery log's path in /openapi.json."""
    return {
        "/v1/jobs/{job_id}/webhooks": {
            "get": {
                "operationId": "listWebhookDeliveries",
                "summary": "The job's webhook deliveries, oldest first, with their attempts",
                "parameters": [job_id],
                "responses": {
                    "200": {
                        "description": "The deliveries.",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["deliveries"],
                                    "properties": {
                                        "deliveries": {"type": "array", "items": DELIVERY_SCHEMA}
                                    },
                                }
                            }
                        },
                    },
                    **errors,
                },
            }
        }
    }
