"""The admin JSON API: every client's jobs, a job's timeline, statistics, workers,
and the actions cancel, retry and delete-files (each recorded with the admin's name:
the job's event and a log line). Admin keys only (401 without a key,
403 ``admin_required`` with a client key). Views parse (``shared.admin_filters``, the
parser the /admin page uses too), call ``shared``, return JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime
from typing import Any

from flask import Blueprint, Response, request

from api.auth import current_principal
from api.services import db_session, queue_snapshot, read_session, services
from shared import admin, admin_actions, admin_filters, admin_reads
from shared.admin_actions import Operator
from shared.admin_workers import running_under_lease
from shared.errors import ForbiddenError
from shared.job_json import _timestamp, job_dict
from shared.job_store import parse_job_id
from shared.memory_fit import LiveBudgets, live_budgets
from shared.models import JobStatus, utcnow
from shared.queue_position import QueueSnapshot
from shared.stats import job_stats

blueprint = Blueprint("admin_api", __name__, url_prefix="/v1/admin")

QUERY_FIELDS = admin_filters.job_query_fields(client_field=admin_filters.API_CLIENT_FIELD)


@blueprint.before_request
def require_admin() -> None:
    principal = current_principal()  # 401 without a valid key
    if not principal.is_admin:
        raise ForbiddenError("this endpoint needs an admin key", code="admin_required")


def _json(body: Any, status: int = 200) -> Response:
    text = json.dumps(body, separators=(",", ":"), allow_nan=False)
    return Response(text, status=status, mimetype="application/json")


# ---------------------------------------------------------------- JSON


def admin_job_dict(
    job: admin.AdminJob,
    now: datetime,
    budgets: LiveBudgets | None = None,
    queue: QueueSnapshot | None = None,
) -> dict[str, Any]:
    """A job as the client API shows it, plus ``client`` (id and name) and admin URLs.

    ``budgets``: the live workers' (``shared.memory_fit``), for ``memory.fits_no_worker``;
    ``queue``: the fair order's snapshot, for a queued job's place."""
    body = job_dict(job, now, budgets, queue)
    body["client"] = {"id": job.client_id, "name": job.client_name}
    base = f"/v1/admin/jobs/{job.id}"
    body["admin_urls"] = {
        "self": base,
        "cancel": f"{base}/cancel",
        "retry": f"{base}/retry",
        "files": f"{base}/files",
    }
    return body


def detail_dict(detail: admin.AdminJobDetail, now: datetime) -> dict[str, Any]:
    queued = detail.job.status is JobStatus.QUEUED
    queue = queue_snapshot(read_session(), detail.job.created_at) if queued else None
    body = admin_job_dict(detail.job, now, live_budgets(read_session()), queue)
    body.update(
        {
            "n_styles": detail.job.n_styles,
            "cancel_requested": detail.cancel_requested,
            "lease_owner": detail.lease_owner,
            "lease_expires_at": _timestamp(detail.lease_expires_at),
            "updated_at": _timestamp(detail.updated_at),
            "files_deleted": detail.files_deleted,
            "cached_from": None if detail.cached_from is None else str(detail.cached_from),
            "follows": None if detail.follows is None else str(detail.follows),
            "followers": [str(job_id) for job_id in detail.followers],
            "events": [
                {
                    "at": _timestamp(e.at),
                    "kind": e.kind,
                    "attempt": e.attempt,
                    "worker": e.worker,
                    "data": e.data,
                }
                for e in detail.events
            ],
        }
    )
    return body


def _plain(value: Any) -> Any:
    """Dataclass fields as JSON: timestamps as ISO 8601 UTC with Z, UUIDs as text."""
    if isinstance(value, datetime):
        return _timestamp(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


# ---------------------------------------------------------------- views


@blueprint.get("/jobs")
def list_jobs() -> Response:
    admin_filters.reject_unknown(request.args, QUERY_FIELDS)
    query = admin_filters.parse_job_query(request.args, client_field=admin_filters.API_CLIENT_FIELD)
    page = admin.list_jobs(read_session(), query.filters, limit=query.limit, cursor=query.cursor)
    now = utcnow()
    budgets = live_budgets(read_session())
    queued = [j.created_at for j in page.items if j.status is JobStatus.QUEUED]
    queue = queue_snapshot(read_session(), max(queued)) if queued else None
    return _json(
        {
            "jobs": [admin_job_dict(j, now, budgets, queue) for j in page.items],
            "next_cursor": page.next_cursor,
        }
    )


@blueprint.get("/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    now = utcnow()
    detail = admin.job_detail(read_session(), parse_job_id(job_id), now=now)
    return _json(detail_dict(detail, now))


def _detail_response(job_id: Any) -> Response:
    now = utcnow()
    return _json(detail_dict(admin.job_detail(db_session(), job_id, now=now), now))


def _operator() -> Operator:
    principal = current_principal()
    return Operator(principal.name, principal.client_id)


@blueprint.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str) -> Response:
    job = admin_actions.cancel_job(db_session(), parse_job_id(job_id), by=_operator())
    return _detail_response(job.id)


@blueprint.post("/jobs/<job_id>/retry")
def retry_job(job_id: str) -> Response:
    publish = services().publisher.publish
    job = admin_actions.retry_job(db_session(), parse_job_id(job_id), publish, by=_operator())
    return _detail_response(job.id)


@blueprint.delete("/jobs/<job_id>/files")
def delete_job_files(job_id: str) -> Response:
    storage = services().storage
    job = admin_actions.delete_job_files(
        db_session(), storage, parse_job_id(job_id), by=_operator()
    )
    return _detail_response(job.id)


@blueprint.get("/stats")
def stats() -> Response:
    admin_filters.reject_unknown(request.args, frozenset({"hours"}))
    hours = admin_filters.parse_hours(request.args.get("hours"))
    result = job_stats(read_session(), hours=hours)
    return _json(_plain(asdict(result)))


@blueprint.get("/workers")
def workers() -> Response:
    admin_filters.reject_unknown(request.args, frozenset({"all"}))
    include_dead = admin_filters.parse_flag(request.args.get("all"), field="all")
    session = read_session()
    found = admin_reads.live_workers(session, include_dead=include_dead)
    running = running_under_lease(session, [w.name for w in found if w.alive])
    return _json(
        {
            "workers": [
                _plain({**asdict(w), "running_job_ids": list(running.get(w.name, ()))})
                for w in found
            ]
        }
    )
