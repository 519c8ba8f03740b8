"""The /admin pages and actions. Reads and actions go through ``shared.admin``."""

from __future__ import annotations

import re
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
    send_file,
    url_for,
)
from markupsafe import Markup
from sqlalchemy import select
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

from api.admin_ui import auth, charts
from api.admin_ui.thumbnails import THUMB_SIZES, ThumbnailCache, placeholder_svg
from api.errors import HTTP_ERROR_CODES
from api.job_json import job_dict
from api.services import db_session, services
from api.uploads import serve_input
from shared import admin
from shared.errors import (
    ClientError,
    InvalidInputError,
    NotFoundError,
    ServiceUnavailableError,
    StylequeueError,
    UnauthorizedError,
)
from shared.jobs import parse_job_id
from shared.models import ApiClient, Job, JobStatus, utcnow
from shared.pagination import Cursor, parse_limit
from shared.storage import CONTENT_FILE, committed_preview, committed_result, style_file

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
MAX_NEXT_LENGTH = 2000
ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)
_thumbs = ThumbnailCache()


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
    next_url = _safe_next(request.values.get("next"))
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


def _safe_next(raw: str | None) -> str:
    """Only our own pages: an open redirect would make the login form a phishing aid."""
    default = url_for("admin_ui.jobs_page")
    if not raw or not raw.startswith("/admin") or raw.startswith("//") or "\\" in raw:
        return default
    if len(raw) > MAX_NEXT_LENGTH or not raw.isascii() or not raw.isprintable():
        return default  # a Location header takes neither control characters nor raw non-ASCII
    if raw.startswith(("/admin/login", "/admin/logout")):
        return default
    return raw


# ------------------------------------------------------------------ jobs table


CLIENT_FIELD = "client"  # the page's name for the client filter (the JSON API's: client_id)


def parse_filters(args: MultiDict[str, str]) -> admin.JobFilters:
    """The table's filters, by the parser the admin API uses; a bad one is a 400 page."""
    return admin.parse_job_filters(args, client_field=CLIENT_FIELD)


def _filter_query(filters: admin.JobFilters, **extra: str) -> str:
    pairs: list[tuple[str, str]] = [("status", s.value) for s in filters.statuses]
    if filters.client_id is not None:
        pairs.append((CLIENT_FIELD, str(filters.client_id)))
    if filters.worker:
        pairs.append(("worker", filters.worker))
    for name in ("created_from", "created_to"):
        value = getattr(filters, name)
        if value is not None:
            pairs.append((name, value.isoformat().replace("+00:00", "Z")))
    pairs += [(k, v) for k, v in extra.items() if v]
    return ("?" + urlencode(pairs)) if pairs else ""


def _toggle(filters: admin.JobFilters, status: JobStatus) -> str:
    chosen = set(filters.statuses) ^ {status}
    toggled = replace(filters, statuses=tuple(s for s in JobStatus if s in chosen))
    return url_for("admin_ui.jobs_page") + _filter_query(toggled)


@blueprint.get("")
def jobs_page() -> str:
    filters = parse_filters(request.args)
    limit = parse_limit(request.args.get("limit"))
    raw_cursor = request.args.get("cursor")
    cursor = Cursor.decode(raw_cursor) if raw_cursor else None
    session = db_session()
    page = admin.list_jobs(session, filters, limit=limit, cursor=cursor)
    clients = session.execute(
        select(ApiClient.id, ApiClient.name).order_by(ApiClient.name).limit(CLIENTS_IN_FILTER)
    ).all()
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
        is_first_page=cursor is None,
        newest_url=url_for("admin_ui.jobs_page") + _filter_query(filters),
        here=request.full_path.rstrip("?"),
    )


def _row(job: admin.AdminJob, now: datetime) -> dict[str, Any]:
    data = job_dict(job, now)
    return {
        "job": job,
        "id": str(job.id),
        "short_id": str(job.id)[:8],
        "status": job.status.value,
        "active": job.status in ACTIVE,
        "queue_seconds": data["queue_seconds"],
        "run_seconds": data["run_seconds"],
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
    ids: list[uuid.UUID] = []
    for raw in request.args.getlist("id")[:LIVE_MAX_IDS]:
        try:
            ids.append(uuid.UUID(raw))
        except ValueError:
            raise InvalidInputError(f"id: {raw!r} is not a job id", field="id") from None
    rows = db_session().execute(
        select(
            Job.id,
            Job.status,
            Job.iteration,
            Job.iterations,
            Job.percent,
            Job.eta_seconds,
            Job.worker,
            Job.cancel_requested,
            Job.preview_file,
        ).where(Job.id.in_(ids))
    )
    storage = services().storage
    out: dict[str, Any] = {}
    for row in rows if ids else []:
        preview = None
        if row.status is JobStatus.RUNNING:
            try:
                preview_name = committed_preview(row.preview_file)
                version = storage.path(row.id, preview_name).stat().st_mtime_ns
                preview = url_for(
                    "admin_ui.thumbnail", job_id=row.id, name="preview", size=96, v=version
                )
            except FileNotFoundError:
                pass
        out[str(row.id)] = {
            "status": row.status.value,
            "iteration": row.iteration,
            "iterations": row.iterations,
            "percent": row.percent,
            "eta": charts.format_seconds(row.eta_seconds) if row.eta_seconds else None,
            "worker": row.worker,
            "cancel_requested": row.cancel_requested,
            "preview": preview,
            "result": (
                url_for("admin_ui.thumbnail", job_id=row.id, name="result", size=96)
                if row.status is JobStatus.SUCCEEDED
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
    return render_template(
        "admin/job.html",
        d=detail,
        job=job,
        data=data,
        status=job.status.value,
        active=job.status in ACTIVE,
        thumbs=_thumb_urls(
            job.id,
            JobStatus.RUNNING if job.status in ACTIVE else job.status,  # a preview slot
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
        can_cancel=job.status in ACTIVE,
        can_retry=job.status in (JobStatus.FAILED, JobStatus.CANCELED) and not detail.files_deleted,
        can_delete=job.status.is_finished and not detail.files_deleted,
        here=request.path,
    )


def _after_action(job_id: uuid.UUID) -> BaseResponse:
    target = _safe_next(request.form.get("next")) if request.form.get("next") else None
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
    job = admin.retry_job(db_session(), parse_job_id(job_id), svc.publisher.publish)
    flash(f"Job {str(job.id)[:8]} queued again.", "ok")
    return _after_action(job.id)


@blueprint.post("/jobs/<job_id>/delete-files")
def delete_files(job_id: str) -> BaseResponse:
    job = admin.delete_job_files(db_session(), services().storage, parse_job_id(job_id))
    flash(f"Files of job {str(job.id)[:8]} deleted.", "ok")
    return _after_action(job.id)


# ------------------------------------------------------------------ images


def _file_name(name: str, job_id: uuid.UUID) -> str:
    if name == "content":
        return CONTENT_FILE
    if name in ("preview", "result"):
        # Only the file the row names: the one its attempt committed.
        column = Job.preview_file if name == "preview" else Job.result_file
        named = db_session().execute(select(column).where(Job.id == job_id)).scalar()
        return committed_preview(named) if name == "preview" else committed_result(named)
    if re.fullmatch(r"style-[0-9]{1,3}", name):
        return style_file(int(name[6:]))
    raise NotFoundError(
        f"no image {name!r}: content, style-N, preview or result", code="image_not_found"
    )


@blueprint.get("/jobs/<job_id>/thumbs/<name>")
def thumbnail(job_id: str, name: str) -> Response:
    """A JPEG thumbnail (``?size=96`` or 320); an SVG placeholder when the file is gone."""
    parsed = parse_job_id(job_id)
    file_name = _file_name(name, parsed)
    raw_size = request.args.get("size", str(THUMB_SIZES[0]))
    if raw_size not in {str(s) for s in THUMB_SIZES}:
        raise InvalidInputError(
            f"size: must be one of {', '.join(map(str, THUMB_SIZES))}", field="size"
        )
    size = int(raw_size)
    changing = name == "preview"
    path = services().storage.path(parsed, file_name)
    data = _thumbs.thumbnail(path, size, cache=not changing)
    if data is None:
        label = "no preview yet" if changing else "no file"
        response = Response(placeholder_svg(size, label), mimetype="image/svg+xml")
        response.headers["Cache-Control"] = "no-store"
        return response
    response = Response(data, mimetype="image/jpeg")
    response.headers["Cache-Control"] = "no-store" if changing else "private, max-age=86400"
    return response


@blueprint.get("/jobs/<job_id>/files/<name>")
def image(job_id: str, name: str) -> Response:
    """A job's image at full size (inputs as uploaded, preview and result as PNG)."""
    parsed = parse_job_id(job_id)
    file_name = _file_name(name, parsed)
    path = services().storage.path(parsed, file_name)
    if not path.is_file():
        raise NotFoundError(f"job {job_id} has no {name} file (never written, or deleted)")
    if name == "content" or name.startswith("style-"):
        return serve_input(path)  # as uploaded: its own type, never sniffed
    return send_file(path, max_age=0, mimetype="image/png")


# ------------------------------------------------------------------ stats and workers


@blueprint.get("/stats")
def stats_page() -> str:
    stats = admin.job_stats(db_session(), hours=admin.parse_hours(request.args.get("hours")))
    per_hour = stats.per_hour
    every = max(1, len(per_hour) // 8)
    labels = [b.hour_start.strftime("%H:00" if stats.hours <= 48 else "%m-%d %H") for b in per_hour]
    throughput = charts.bar_chart(
        labels,
        [("created", [b.created for b in per_hour]), ("finished", [b.finished for b in per_hour])],
        label_every=every,
    )
    counts = charts.hbar_chart(
        [
            (s.value, float(stats.counts.get(s.value, 0)), charts.STATUS_COLOURS[s])
            for s in JobStatus
        ]
    )
    timings = charts.hbar_chart(
        [
            ("wait p50", stats.queue_seconds.p50, "#8fb3ef"),
            ("wait p95", stats.queue_seconds.p95, "#2f6fdb"),
            ("run p50", stats.run_seconds.p50, "#8fd3ab"),
            ("run p95", stats.run_seconds.p95, "#1f9d55"),
        ],
        unit="s",
    )
    return render_template(
        "admin/stats.html",
        stats=stats,
        throughput=throughput,
        counts=counts,
        timings=timings,
        hour_choices=(6, 24, 24 * 7, 24 * 30),
    )


@blueprint.get("/workers")
def workers_page() -> str:
    workers = admin.live_workers(db_session(), include_dead=True)
    now = utcnow()
    return render_template(
        "admin/workers.html",
        workers=workers,
        alive=sum(1 for w in workers if w.alive),
        ages={w.name: (now - w.last_heartbeat_at).total_seconds() for w in workers},
    )
