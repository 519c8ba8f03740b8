"""A job's webhook options at submit, and its delivery log (``GET /v1/jobs/{id}/webhooks``)."""

from __future__ import annotations

import json

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
