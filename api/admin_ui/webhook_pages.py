"""A job's webhook deliveries on its /admin page, and the redeliver button's route."""

from __future__ import annotations

import uuid
from typing import Any

from flask import flash, redirect, url_for
from werkzeug.wrappers import Response as BaseResponse

from api.admin_ui.views import blueprint, operator
from api.services import db_session
from shared import webhook_outbox
from shared.job_store import get_job, parse_job_id


@blueprint.app_template_global()
def webhook_deliveries(job_id: uuid.UUID) -> list[dict[str, Any]]:
    """The job's deliveries as the API shows them (oldest first), for its page."""
    return [
        webhook_outbox.delivery_dict(d)
        for d in webhook_outbox.list_deliveries(db_session(), job_id)
    ]


@blueprint.post("/jobs/<job_id>/webhooks/<message_id>/redeliver")
def redeliver_webhook(job_id: str, message_id: str) -> BaseResponse:
    session = db_session()
    job = get_job(session, parse_job_id(job_id), client_id=None)
    by = operator()
    webhook_outbox.redeliver(session, job.id, message_id, by=by.name)
    flash(f"Webhook {message_id} of job {str(job.id)[:8]}: due again now.", "ok")
    return redirect(url_for("admin_ui.job_page", job_id=job.id) + "#webhooks", code=303)
