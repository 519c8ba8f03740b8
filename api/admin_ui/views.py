"""The /admin pages and actions: the guard, the job table, a job, statistics, workers.

Views parse with ``shared.admin_filters`` (the parser the admin JSON API uses),
read and act through ``shared`` (``shared.admin``, ``shared.admin_reads``,
``shared.stats``, ``shared.jobs`` for a retry), and render a template; they run no query of their own. The
image routes are in ``api.admin_ui.images``.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from flask import (
    Blueprint,
    Response,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from markupsafe import Markup
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

from api.admin_ui import auth, charts
from api.admin_ui.thumbnails import placeholder_svg
from api.errors import HTTP_ERROR_CODES
from api.job_json import job_dict
from api.services import db_session, services
from shared import admin, admin_filters, admin_reads, jobs
from shared.errors import (
    ClientError,
    NotFoundError,
    ServiceUnavailableError,
    StylequeueError,
    UnauthorizedError,
)
from shared.job_store import parse_job_id
from shared.job_view import job_timings
from shared.models import JobStatus, utcnow
from shared.stats import job_stats

blueprint = Blueprint(
    "admin_ui",
    __name__,
    url_prefix="/admin",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

PUBLIC_ENDPOINTS = {"admin_ui.login", "admin_ui.static"}
JSON_ENDPOINTS = {"admin_ui.live"}
LIVE_MAX_IDS = 100
CLIENTS_IN_FILTER = 500


# ------------------------------------------------------------------ guard and errors


@blueprint.before_request
def _require_admin() -> BaseResponse | None:
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    principal = auth.current_admin()
    if principal is None:
        if request.method == "GET" and request.endpoint not in JSON_ENDPOINTS and not _is_image():
            return redirect(url_for("admin_ui.login", next=request.full_path.rstrip("?")))
        raise UnauthorizedError("log in at /admin/login first", code="login_required")
    g.admin = principal
    if request.method == "POST":
        auth.check_csrf(request)
    return None


def _is_image() -> bool:
    return request.endpoint in {"admin_ui.thumbnail", "admin_ui.image"}


@blueprint.errorhandler(StylequeueError)
@blueprint.errorhandler(HTTPException)
def _error_page(exc: Exception) -> tuple[Any, int]:
    if isinstance(exc, ClientError | ServiceUnavailableError):
        status, code, message = exc.http_status, exc.code, exc.message
        details = exc.details
    elif isinstance(exc, HTTPException):
        status = exc.code or 500
        code = HTTP_ERROR_CODES.get(status, "http_error")
        message, details = exc.description or exc.name, {}
    else:
        raise exc  # a bug: the app's handler logs it and answers 500
    if request.endpoint in JSON_ENDPOINTS or request.accept_mimetypes.best == "application/json":
        body = {"error": {"code": code, "message": message, "details": details}}
        return jsonify(body), status
    if _is_image():
        return Response(placeholder_svg(96, "error"), mimetype="image/svg+xml"), status
    page = render_template(
        "admin/error.html", status=status, code=code, message=message, details=details
    )
    return page, status


@blueprint.get("/")
def trailing_slash() -> BaseResponse:
    return redirect(url_for("admin_ui.jobs_page"))


@blueprint.route("/<path:rest>", methods=["GET", "POST"])
def not_found(rest: str) -> Response:
    raise NotFoundError(f"no admin page at /admin/{rest}", code="page_not_found")


@blueprint.app_template_global()
def csrf_field() -> Markup:
    return Markup('<input type="hidden" name="{}" value="{}">').format(
        auth.CSRF_FIELD, auth.csrf_token()
    )


@blueprint.app_template_global()
def csrf_value() -> str:
    return auth.csrf_token()


@blueprint.app_template_filter("duration")
def _duration(value: float | None) -> str:
    return charts.format_seconds(value)


@blueprint.app_template_filter("when")
def _when(value: datetime | str | None) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value.strftime("%Y-%m-%d %H:%M:%S")


# ------------------------------------------------------------------ login


@blueprint.route("/login", methods=["GET", "POST"])
def login() -> Any:
    next_url = auth.safe_next(request.values.get("next"))
    if request.method == "GET":
        if auth.current_admin() is not None:
            return redirect(next_url)
        return render_template("admin/login.html", next=next_url, error=None)
    auth.check_csrf(request)
    try:
        auth.log_in(request.form.get("key", ""))
    except ClientError as exc:
        page = render_template("admin/login.html", next=next_url, error=exc.message)
        return page, exc.http_status
    return redirect(next_url, code=303)


@blueprint.post("/logout")
def logout() -> BaseResponse:
    auth.log_out()
    return redirect(url_for("admin_ui.login"), code=303)


# ------------------------------------------------------------------ jobs table


def _filter_query(filters: admin.JobFilters, **extra: str) -> str:
    pairs = admin_filters.filter_pairs(filters, client_field=admin_filters.PAGE_CLIENT_FIELD)
    pairs += [(k, v) for k, v in extra.items() if v]
    return ("?" + urlencode(pairs)) if pairs else ""


def _toggle(filters: admin.JobFilters, status: JobStatus) -> str:
    chosen = set(filters.statuses) ^ {status}
    toggled = replace(filters, statuses=tuple(s for s in JobStatus if s in chosen))
    return url_for("admin_ui.jobs_page") + _filter_query(toggled)


@blueprint.get("")
def jobs_page() -> str:
    query = admin_filters.parse_job_query(
        request.args, client_field=admin_filters.PAGE_CLIENT_FIELD
    )
    filters = query.filters
    session = db_session()
    page = admin.list_jobs(session, filters, limit=query.limit, cursor=query.cursor)
    clients = admin_reads.client_choices(session, limit=CLIENTS_IN_FILTER)
    now = utcnow()
    rows = [_row(job, now) for job in page.items]
    older = None
    if page.next_cursor:
        older = url_for("admin_ui.jobs_page") + _filter_query(filters, cursor=page.next_cursor)
    return render_template(
        "admin/jobs.html",
        rows=rows,
        filters=filters,
        statuses=list(JobStatus),
        toggle_url={s.value: _toggle(filters, s) for s in JobStatus},
        all_url=url_for("admin_ui.jobs_page") + _filter_query(replace(filters, statuses=())),
        clients=clients,
        older_url=older,
        is_first_page=query.cursor is None,
        newest_url=url_for("admin_ui.jobs_page") + _filter_query(filters),
        here=request.full_path.rstrip("?"),
    )


def _row(job: admin.AdminJob, now: datetime) -> dict[str, Any]:
    timings = job_timings(job.created_at, job.started_at, job.finished_at, now)
    return {
        "job": job,
        "id": str(job.id),
        "short_id": str(job.id)[:8],
        "status": job.status.value,
        "active": not job.status.is_finished,
        "queue_seconds": timings.queue_seconds,
        "run_seconds": timings.run_seconds,
        "thumbs": _thumb_urls(job.id, job.status, n_styles=1),
    }


def _thumb_urls(job_id: uuid.UUID, status: JobStatus, *, n_styles: int, size: int = 96) -> dict:
    def url(name: str) -> str:
        return url_for("admin_ui.thumbnail", job_id=job_id, name=name, size=size)

    return {
        "content": url("content"),
        "styles": [url(f"style-{i}") for i in range(n_styles)],
        "result": url("result") if status is JobStatus.SUCCEEDED else None,
        "preview": url("preview") if status is JobStatus.RUNNING else None,
    }


@blueprint.get("/live")
def live() -> Response:
    """The state of some jobs (``?id=...`` repeated), polled by admin.js every ~2 s."""
    ids = admin_filters.parse_job_ids(request.args, field="id", at_most=LIVE_MAX_IDS)
    out: dict[str, Any] = {}
    for job in admin_reads.live_jobs(db_session(), services().storage, ids):
        preview = None
        if job.preview_version is not None:
            preview = url_for(
                "admin_ui.thumbnail", job_id=job.id, name="preview", size=96, v=job.preview_version
            )
        out[str(job.id)] = {
            "status": job.status.value,
            "iteration": job.iteration,
            "iterations": job.iterations,
            "percent": job.percent,
            "eta": charts.format_seconds(job.eta_seconds) if job.eta_seconds else None,
            "worker": job.worker,
            "cancel_requested": job.cancel_requested,
            "preview": preview,
            "result": (
                url_for("admin_ui.thumbnail", job_id=job.id, name="result", size=96)
                if job.status is JobStatus.SUCCEEDED
                else None
            ),
        }
    response = jsonify({"jobs": out})
    response.headers["Cache-Control"] = "no-store"
    return response


# ------------------------------------------------------------------ one job


@blueprint.get("/jobs/<job_id>")
def job_page(job_id: str) -> str:
    detail = admin.job_detail(db_session(), parse_job_id(job_id))
    job = detail.job
    data = job_dict(job)
    active = not job.status.is_finished
    actions = admin_reads.job_actions(detail)
    return render_template(
        "admin/job.html",
        d=detail,
        job=job,
        data=data,
        status=job.status.value,
        active=active,
        thumbs=_thumb_urls(
            job.id,
            JobStatus.RUNNING if active else job.status,  # a preview slot
            n_styles=detail.n_styles,
            size=320,
        ),
        files={
            "content": url_for("admin_ui.image", job_id=job.id, name="content"),
            "styles": [
                url_for("admin_ui.image", job_id=job.id, name=f"style-{i}")
                for i in range(detail.n_styles)
            ],
            "result": url_for("admin_ui.image", job_id=job.id, name="result"),
        },
        can_cancel=actions.cancel,
        can_retry=actions.retry,
        can_delete=actions.delete_files,
        here=request.path,
    )


def _after_action(job_id: uuid.UUID) -> BaseResponse:
    target = auth.safe_next(request.form.get("next")) if request.form.get("next") else None
    return redirect(target or url_for("admin_ui.job_page", job_id=job_id), code=303)


@blueprint.post("/jobs/<job_id>/cancel")
def cancel(job_id: str) -> BaseResponse:
    job = admin.cancel_job(db_session(), parse_job_id(job_id))
    if job.status is JobStatus.CANCELED:
        flash(f"Job {str(job.id)[:8]} canceled.", "ok")
    elif job.status is JobStatus.RUNNING:
        flash(f"Job {str(job.id)[:8]}: cancel requested; it stops at its next heartbeat.", "ok")
    else:
        flash(f"Job {str(job.id)[:8]} had already {job.status.value}: nothing to cancel.", "info")
    return _after_action(job.id)


@blueprint.post("/jobs/<job_id>/retry")
def retry(job_id: str) -> BaseResponse:
    svc = services()
    job = jobs.retry_job(db_session(), parse_job_id(job_id), svc.publisher.publish)
    flash(f"Job {str(job.id)[:8]} queued again.", "ok")
    return _after_action(job.id)


@blueprint.post("/jobs/<job_id>/delete-files")
def delete_files(job_id: str) -> BaseResponse:
    job = admin.delete_job_files(db_session(), services().storage, parse_job_id(job_id))
    flash(f"Files of job {str(job.id)[:8]} deleted.", "ok")
    return _after_action(job.id)


# ------------------------------------------------------------------ stats and workers


@blueprint.get("/stats")
def stats_page() -> str:
    hours = admin_filters.parse_hours(request.args.get("hours"))
    stats = job_stats(db_session(), hours=hours)
    return render_template(
        "admin/stats.html",
        stats=stats,
        **charts.stats_charts(stats),
        hour_choices=(6, 24, 24 * 7, 24 * 30),
    )


@blueprint.get("/workers")
def workers_page() -> str:
    workers = admin_reads.live_workers(db_session(), include_dead=True)
    now = utcnow()
    return render_template(
        "admin/workers.html",
        workers=workers,
        alive=sum(1 for w in workers if w.alive),
        ages={w.name: (now - w.last_heartbeat_at).total_seconds() for w in workers},
    )
