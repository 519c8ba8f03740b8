"""The /admin blueprint: the login guard, error pages, the login, statistics, workers.

Views parse with ``shared.admin_filters`` (the parser the admin JSON API uses),
read and act through ``shared`` (``shared.admin``, ``shared.admin_actions``,
``shared.admin_reads``, ``shared.admin_workers``, ``shared.stats``) and render a
template; they run no query of their own. The job table, a job's page and the
actions are in ``api.admin_ui.job_pages``, the image routes in
``api.admin_ui.images``. A page that refreshes by itself asks for its body again
with ``?fragment=1`` (admin.js), so the same template draws both.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import (
    Blueprint,
    Response,
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
from api.services import db_session
from shared import admin_filters
from shared.admin_actions import Operator
from shared.admin_workers import FOLD_AFTER_SECONDS, workers_overview
from shared.errors import (
    ClientError,
    NotFoundError,
    ServiceUnavailableError,
    StylequeueError,
    UnauthorizedError,
)
from shared.models import utcnow
from shared.stats import job_stats
from shared.stats_series import window_label

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
IMAGE_ENDPOINTS = {"admin_ui.thumbnail", "admin_ui.image", "admin_ui.losses"}


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
    return request.endpoint in IMAGE_ENDPOINTS


def operator() -> Operator:
    """The logged-in admin, as the actions record who did them."""
    return Operator(g.admin.name, g.admin.client_id)


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


@blueprint.app_template_filter("gib")
def _gib(value: int | None) -> str:
    return "–" if value is None else f"{value / 1024**3:.1f} GiB"


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


# ------------------------------------------------------------------ stats and workers

STATS_REFRESH_MS = 15_000
WORKERS_REFRESH_MS = 5_000


def _fragment() -> bool:
    """The page asks for its refreshing part alone (admin.js's ``data-refresh``)."""
    return request.args.get("fragment") == "1"


@blueprint.get("/stats")
def stats_page() -> str:
    hours = admin_filters.parse_hours(request.args.get("hours"))
    stats = job_stats(db_session(), hours=hours)
    context = {
        "stats": stats,
        "window": window_label(hours),
        "bucket_word": "day" if stats.bucket_hours > 1 else "hour",
        **charts.stats_charts(stats),
    }
    if _fragment():
        return render_template("admin/_stats_body.html", **context)
    return render_template(
        "admin/stats.html",
        **context,
        hour_choices=[(h, window_label(h)) for h in (6, 24, 24 * 7, 24 * 30)],
        refresh_url=url_for("admin_ui.stats_page", hours=hours, fragment=1),
        refresh_ms=STATS_REFRESH_MS,
    )


@blueprint.get("/workers")
def workers_page() -> str:
    overview = workers_overview(db_session())
    context = {
        "o": overview,
        "window": window_label(overview.hours),
        "fold_minutes": round(FOLD_AFTER_SECONDS / 60),
        "now_ms": int(utcnow().timestamp() * 1000),
    }
    if _fragment():
        return render_template("admin/_workers_body.html", **context)
    return render_template(
        "admin/workers.html",
        **context,
        refresh_url=url_for("admin_ui.workers_page", fragment=1),
        refresh_ms=WORKERS_REFRESH_MS,
    )
