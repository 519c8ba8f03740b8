"""The admin JSON API: every client's jobs, a job's timeline, statistics, workers,
and the actions cancel, retry and delete-files. Admin keys only (401 without a key,
403 ``admin_required`` with a client key). Views parse, call ``shared.admin``, return JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from datetime import datetime
from typing import Any

from flask import Blueprint, Response, request
from werkzeug.datastructures import MultiDict

from api.auth import current_principal
from api.job_json import _timestamp, job_dict
from api.services import db_session, read_session, services
from shared import admin
from shared.errors import ForbiddenError, InvalidInputError
from shared.jobs import parse_job_id
from shared.logging import log_cancel_requested
from shared.models import utcnow
from shared.pagination import Cursor, parse_limit

blueprint = Blueprint("admin_api", __name__, url_prefix="/v1/admin")

QUERY_FIELDS = frozenset(
    {"status", "client_id", "worker", "created_from", "created_to", "limit", "cursor"}
)


@blueprint.before_request
def require_admin() -> None:
    principal = current_principal()  # 401 without a valid key
    if not principal.is_admin:
        raise ForbiddenError("this endpoint needs an admin key", code="admin_required")


def _json(body: Any, status: int = 200) -> Response:
    text = json.dumps(body, separators=(",", ":"), allow_nan=False)
    return Response(text, status=status, mimetype="application/json")


# ---------------------------------------------------------------- parsing


def parse_filters(args: MultiDict[str, str]) -> admin.JobFilters:
    """The admin list's filters (the parser the /admin page uses too); a bad value is a 400."""
    return admin.parse_job_filters(args, client_field="client_id")


def _reject_unknown(args: Mapping[str, str], known: frozenset[str]) -> None:
    unknown = sorted(set(args) - known)
    if unknown:
        raise InvalidInputError(
            f"{unknown[0]}: unknown query parameter; known: {', '.join(sorted(known))}",
            field=unknown[0],
            code="unknown_parameter",
        )


# ---------------------------------------------------------------- JSON


def admin_job_dict(job: admin.AdminJob, now: datetime) -> dict[str, Any]:
    """A job as the client API shows it, plus ``client`` (id and name) and admin URLs."""
    body = job_dict(job, now)
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
    body = admin_job_dict(detail.job, now)
    body.update(
        {
            "n_styles": detail.n_styles,
            "cancel_requested": detail.cancel_requested,
            "lease_owner": detail.lease_owner,
            "lease_expires_at": _timestamp(detail.lease_expires_at),
            "updated_at": _timestamp(detail.updated_at),
            "files_deleted": detail.files_deleted,
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
    _reject_unknown(request.args, QUERY_FIELDS)
    filters = parse_filters(request.args)
    raw_cursor = request.args.get("cursor")
    page = admin.list_jobs(
        read_session(),
        filters,
        limit=parse_limit(request.args.get("limit")),
        cursor=Cursor.decode(raw_cursor) if raw_cursor else None,
    )
    now = utcnow()
    return _json(
        {"jobs": [admin_job_dict(j, now) for j in page.items], "next_cursor": page.next_cursor}
    )


@blueprint.get("/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    now = utcnow()
    detail = admin.job_detail(read_session(), parse_job_id(job_id), now=now)
    return _json(detail_dict(detail, now))


def _detail_response(job_id: Any) -> Response:
    now = utcnow()
    return _json(detail_dict(admin.job_detail(db_session(), job_id, now=now), now))


@blueprint.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str) -> Response:
    job = admin.cancel_job(db_session(), parse_job_id(job_id))
    log_cancel_requested(job.id, client_id=job.client_id, status=job.status.value)
    return _detail_response(job.id)


@blueprint.post("/jobs/<job_id>/retry")
def retry_job(job_id: str) -> Response:
    job = admin.retry_job(db_session(), parse_job_id(job_id), services().publisher.publish)
    return _detail_response(job.id)


@blueprint.delete("/jobs/<job_id>/files")
def delete_job_files(job_id: str) -> Response:
    job = admin.delete_job_files(db_session(), services().storage, parse_job_id(job_id))
    return _detail_response(job.id)


@blueprint.get("/stats")
def stats() -> Response:
    _reject_unknown(request.args, frozenset({"hours"}))
    result = admin.job_stats(read_session(), hours=admin.parse_hours(request.args.get("hours")))
    return _json(_plain(asdict(result)))


@blueprint.get("/workers")
def workers() -> Response:
    _reject_unknown(request.args, frozenset({"all"}))
    raw = (request.args.get("all") or "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise InvalidInputError("all: must be true or false", field="all", code="invalid_all")
    found = admin.live_workers(read_session(), include_dead=raw in ("true", "1"))
    return _json({"workers": [_plain(asdict(w)) for w in found]})
