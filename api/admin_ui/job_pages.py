"""The /admin job table, a job's page, the live updates both poll, and the actions.

The table: filters (status pills with their counts, client, worker, time),
a search by job id, keyset pages, and bulk actions behind a confirmation page.
``/admin/live`` answers admin.js every ~2 s: the rows shown (progress, times,
status, images), the rows newer than the newest shown (rendered here, for the
first page), and the counts. Routes on the page's blueprint, behind its login
guard; reads and actions go through ``shared``.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from flask import Response, flash, jsonify, redirect, render_template, request, url_for
from markupsafe import Markup
from werkzeug.wrappers import Response as BaseResponse

from api.admin_ui import auth, charts
from api.admin_ui.views import blueprint, operator
from api.services import db_session, queue_snapshot, services
from shared import admin, admin_actions, admin_filters, admin_reads, loss_series
from shared.admin import AdminJob, JobFilters
from shared.admin_actions import BULK_LIMIT, bulk_targets
from shared.job_json import job_dict
from shared.job_store import parse_job_id
from shared.job_view import job_timings
from shared.memory_fit import live_budgets
from shared.models import JobStatus, utcnow
from shared.pagination import Cursor

LIVE_MAX_IDS = 100
LIVE_NEW_ROWS = 20  # new rows one poll adds at most; past that the page offers a reload
CLIENTS_IN_FILTER = 500
SEARCH_RESULTS = 50
BULK_SAMPLE = 10


def _filter_query(filters: JobFilters, **extra: str) -> str:
    pairs = admin_filters.filter_pairs(filters, client_field=admin_filters.PAGE_CLIENT_FIELD)
    pairs += [(k, v) for k, v in extra.items() if v]
    return ("?" + urlencode(pairs)) if pairs else ""


def _page_url(filters: JobFilters, **extra: str) -> str:
    return url_for("admin_ui.jobs_page") + _filter_query(filters, **extra)


def _toggle(filters: JobFilters, status: JobStatus) -> str:
    chosen = set(filters.statuses) ^ {status}
    return _page_url(replace(filters, statuses=tuple(s for s in JobStatus if s in chosen)))


def _counts(session: Any, filters: JobFilters, *, fresh: bool) -> dict[str, Any]:
    counts = admin.status_counts(session, filters, fresh=fresh)
    shown = sum(counts[s.value] for s in filters.statuses) if filters.statuses else None
    return {"counts": counts, "total": sum(counts.values()), "shown": shown}


@blueprint.get("")
def jobs_page() -> Any:
    session = db_session()
    search = admin_filters.parse_id_search(request.args.get("q"))
    query = admin_filters.parse_job_query(
        request.args, client_field=admin_filters.PAGE_CLIENT_FIELD
    )
    filters = query.filters
    older = None
    if search is not None:
        found = admin.find_jobs(session, search, limit=SEARCH_RESULTS)
        if len(found) == 1:
            return redirect(url_for("admin_ui.job_page", job_id=found[0].id))
        items = found
    else:
        page = admin.list_jobs(session, filters, limit=query.limit, cursor=query.cursor)
        items = page.items
        if page.next_cursor:
            older = _page_url(filters, cursor=page.next_cursor)
    now = utcnow()
    rows = [job_row(job, now) for job in items]
    live_new = search is None and query.cursor is None
    return render_template(
        "admin/jobs.html",
        rows=rows,
        filters=filters,
        search=request.args.get("q", "") if search is not None else "",
        statuses=list(JobStatus),
        toggle_url={s.value: _toggle(filters, s) for s in JobStatus},
        all_url=_page_url(replace(filters, statuses=())),
        clients=admin_reads.client_choices(session, limit=CLIENTS_IN_FILTER),
        older_url=older,
        is_first_page=query.cursor is None,
        newest_url=_page_url(filters),
        here=request.full_path.rstrip("?"),
        live_query=_filter_query(filters)[1:] if live_new else None,
        newest=Cursor(items[0].created_at, items[0].id).encode() if live_new and items else "",
        bulk_retry_url=url_for("admin_ui.bulk_page") + _filter_query(filters, action="retry"),
        bulk_cancel_url=url_for("admin_ui.bulk_page") + _filter_query(filters, action="cancel"),
        **_counts(session, filters, fresh=True),  # a page load counts; the polls may reuse
    )


def job_row(job: AdminJob, now: datetime) -> dict[str, Any]:
    """What a table row shows of a job (``_macros.html``'s ``job_row``)."""
    timings = job_timings(job.created_at, job.started_at, job.finished_at, now)
    never_ran = job.started_at is None and job.status.is_finished
    return {
        "job": job,
        "id": str(job.id),
        "short_id": str(job.id)[:8],
        "status": job.status.value,
        "active": not job.status.is_finished,
        "queue_seconds": None if never_ran else timings.queue_seconds,
        "queued_for": timings.queue_seconds,
        "run_seconds": timings.run_seconds,
        "thumbs": _thumb_urls(job, size=96),
    }


def _thumb_urls(job: AdminJob, *, size: int) -> dict[str, Any]:
    """The images a job shows: its inputs, and in the last slot its result (succeeded),
    its live preview (running) or its last preview (failed or canceled after one)."""

    def url(name: str, **extra: Any) -> str:
        return url_for("admin_ui.thumbnail", job_id=job.id, name=name, size=size, **extra)

    status = job.status
    last: tuple[str, str, str] | None = None  # (url, label, data-role)
    if status is JobStatus.SUCCEEDED:
        last = (url("result"), "result", "result")
    elif status is JobStatus.RUNNING:
        last = (url("preview"), "live preview", "preview")
    elif status.is_finished and job.preview_file is not None:
        last = (url("preview"), f"last preview ({job.iteration}/{job.iterations})", "preview")
    empty = {
        JobStatus.QUEUED: "queued",
        JobStatus.RUNNING: "no preview yet",
        JobStatus.SUCCEEDED: "no result",
        JobStatus.FAILED: "no result",
        JobStatus.CANCELED: "no result",
    }[status]
    return {
        "content": url("content"),
        "styles": [url(f"style-{i}") for i in range(job.n_styles)],
        "last": last,
        "empty": empty,
    }


def _live_value(job: admin_reads.LiveJob, *, size: int) -> dict[str, Any]:
    preview = None
    if job.preview_version is not None:
        preview = url_for(
            "admin_ui.thumbnail", job_id=job.id, name="preview", size=size, v=job.preview_version
        )
    elif job.status.is_finished and job.status is not JobStatus.SUCCEEDED and job.has_preview:
        preview = url_for("admin_ui.thumbnail", job_id=job.id, name="preview", size=size)
    never_ran = not job.started and job.status.is_finished
    return {
        "status": job.status.value,
        "iteration": job.iteration,
        "iterations": job.iterations,
        "percent": job.percent,
        "eta": charts.format_seconds(job.eta_seconds) if job.eta_seconds else None,
        "worker": job.worker,
        "attempts": job.attempts,
        "cancel_requested": job.cancel_requested,
        "wait": "–" if never_ran else charts.format_seconds(job.queue_seconds),
        "run": charts.format_seconds(job.run_seconds),
        "lease": (
            f"{job.lease_owner} until {job.lease_expires_at:%Y-%m-%d %H:%M:%S}"
            if job.lease_owner and job.lease_expires_at and job.status is JobStatus.RUNNING
            else None
        ),
        "error_code": job.error_code,
        "error_message": job.error_message,
        "preview": preview,
        "result": (
            url_for("admin_ui.thumbnail", job_id=job.id, name="result", size=size)
            if job.status is JobStatus.SUCCEEDED
            else None
        ),
        "losses": (
            url_for("admin_ui.losses", job_id=job.id, v=job.losses_version)
            if job.losses_version is not None
            else None
        ),
    }


@blueprint.get("/live")
def live() -> Response:
    """admin.js's poll: the state of the jobs shown (``?id=...`` repeated); with
    ``since`` (the newest row's cursor) and the table's filters, the rows newer than it
    (HTML) and the status counts."""
    session = db_session()
    ids = admin_filters.parse_job_ids(request.args, field="id", at_most=LIVE_MAX_IDS)
    size = 320 if request.args.get("size") == "320" else 96
    now = utcnow()
    out: dict[str, Any] = {
        str(job.id): _live_value(job, size=size)
        for job in admin_reads.live_jobs(session, services().storage, ids, now=now)
    }
    body: dict[str, Any] = {"jobs": out}
    if "since" in request.args:
        filters = admin_filters.parse_job_filters(
            request.args, client_field=admin_filters.PAGE_CLIENT_FIELD
        )
        raw = request.args.get("since") or ""
        since = Cursor.decode(raw) if raw else None
        if since is None:
            page = admin.list_jobs(session, filters, limit=LIVE_NEW_ROWS, cursor=None)
        else:
            page = admin.list_jobs(
                session, filters, limit=LIVE_NEW_ROWS, cursor=None, newer_than=since
            )
        here = request.args.get("here") or url_for("admin_ui.jobs_page")
        body["rows"] = render_template(
            "admin/_rows.html",
            rows=[job_row(j, now) for j in page.items],
            here=auth.safe_next(here),
        )
        body["newest"] = (
            Cursor(page.items[0].created_at, page.items[0].id).encode() if page.items else raw
        )
        body["more"] = page.next_cursor is not None
        body |= _counts(session, filters, fresh=False)
    response = jsonify(body)
    response.headers["Cache-Control"] = "no-store"
    return response


# ------------------------------------------------------------------ one job


@blueprint.get("/jobs/<job_id>")
def job_page(job_id: str) -> str:
    session = db_session()
    detail = admin.job_detail(session, parse_job_id(job_id))
    job = detail.job
    active = not job.status.is_finished
    actions = admin_reads.job_actions(detail)
    thumbs = _thumb_urls(job, size=320)
    has_losses = loss_series.has_losses(session, job.id)
    return render_template(
        "admin/job.html",
        d=detail,
        job=job,
        data=job_dict(
            job,
            budgets=live_budgets(session),
            queue=queue_snapshot(session, job.created_at)
            if job.status is JobStatus.QUEUED
            else None,
        ),
        status=job.status.value,
        active=active,
        never_ran=job.started_at is None and job.status.is_finished,
        thumbs=thumbs,
        files={
            "content": url_for("admin_ui.image", job_id=job.id, name="content"),
            "styles": [
                url_for("admin_ui.image", job_id=job.id, name=f"style-{i}")
                for i in range(detail.job.n_styles)
            ],
            "result": url_for("admin_ui.image", job_id=job.id, name="result"),
        },
        download_url=(
            url_for("admin_ui.image", job_id=job.id, name="result", download=1)
            if job.status is JobStatus.SUCCEEDED and not detail.files_deleted
            else None
        ),
        losses_url=url_for("admin_ui.losses", job_id=job.id) if has_losses or active else None,
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
    job = admin_actions.cancel_job(db_session(), parse_job_id(job_id), by=operator())
    if job.status is JobStatus.CANCELED:
        flash(f"Job {str(job.id)[:8]} canceled.", "ok")
    elif job.status is JobStatus.RUNNING:
        flash(f"Job {str(job.id)[:8]}: cancel requested; it stops at its next heartbeat.", "ok")
    else:
        flash(f"Job {str(job.id)[:8]} had already {job.status.value}: nothing to cancel.", "info")
    return _after_action(job.id)


@blueprint.post("/jobs/<job_id>/retry")
def retry(job_id: str) -> BaseResponse:
    publish = services().publisher.publish
    job = admin_actions.retry_job(db_session(), parse_job_id(job_id), publish, by=operator())
    flash(f"Job {str(job.id)[:8]} queued again.", "ok")
    return _after_action(job.id)


@blueprint.post("/jobs/<job_id>/delete-files")
def delete_files(job_id: str) -> BaseResponse:
    storage = services().storage
    job = admin_actions.delete_job_files(db_session(), storage, parse_job_id(job_id), by=operator())
    flash(f"Files of job {str(job.id)[:8]} deleted.", "ok")
    return _after_action(job.id)


# ------------------------------------------------------------------ bulk actions

_BULK_WORDS = {"retry": ("Retry", "failed"), "cancel": ("Cancel", "queued")}


def _describe(filters: JobFilters, session: Any) -> str:
    parts = []
    if filters.client_id is not None:
        names = {c.id: c.name for c in admin_reads.client_choices(session, limit=CLIENTS_IN_FILTER)}
        parts.append(f"of client {names.get(filters.client_id, '#' + str(filters.client_id))}")
    else:
        parts.append("of every client")
    if filters.worker:
        parts.append(f"last run by {filters.worker}")
    if filters.created_from:
        parts.append(f"created from {filters.created_from:%Y-%m-%d %H:%M} UTC")
    if filters.created_to:
        parts.append(f"created before {filters.created_to:%Y-%m-%d %H:%M} UTC")
    return ", ".join(parts)


@blueprint.get("/bulk")
def bulk_page() -> str:
    """The confirmation of a bulk action: how many jobs, which (the newest few), a form."""
    session = db_session()
    action = admin_filters.parse_bulk_action(request.args.get("action"))
    filters = admin_filters.parse_job_filters(
        request.args, client_field=admin_filters.PAGE_CLIENT_FIELD
    )
    targets = bulk_targets(filters, action)
    matching = admin.status_counts(session, targets, fresh=True)[targets.statuses[0].value]
    sample = admin.list_jobs(session, targets, limit=BULK_SAMPLE, cursor=None).items
    verb, status = _BULK_WORDS[action]
    now = utcnow()
    return render_template(
        "admin/bulk.html",
        action=action,
        verb=verb,
        status=status,
        matching=matching,
        limit=BULK_LIMIT,
        scope=_describe(filters, session),
        rows=[job_row(job, now) for job in sample],
        pairs=admin_filters.filter_pairs(
            replace(filters, statuses=()), client_field=admin_filters.PAGE_CLIENT_FIELD
        ),
        back_url=_page_url(filters),
    )


@blueprint.post("/bulk")
def bulk() -> BaseResponse:
    session = db_session()
    action = admin_filters.parse_bulk_action(request.form.get("action"))
    filters = admin_filters.parse_job_filters(
        request.form, client_field=admin_filters.PAGE_CLIENT_FIELD
    )
    if action == "retry":
        publish = services().publisher.publish
        result = admin_actions.bulk_retry_failed(session, filters, publish, by=operator())
        done = f"{result.done} failed job{'s' if result.done != 1 else ''} queued again"
    else:
        result = admin_actions.bulk_cancel_queued(session, filters, by=operator())
        done = f"{result.done} queued job{'s' if result.done != 1 else ''} canceled"
    skipped = ", ".join(f"{n} {code}" for code, n in sorted(result.skipped.items()))
    message = done + (f"; skipped: {skipped}" if skipped else "")
    if result.more:
        message += f"; more than {BULK_LIMIT} matched: run it again for the rest"
    flash(message + ".", "ok")
    return redirect(_page_url(replace(filters, statuses=())), code=303)


@blueprint.app_template_global()
def pill_count(counts: dict[str, int], status: str) -> Markup:
    return Markup('<span class="count" data-count="{}">{}</span>').format(
        status, counts.get(status, 0)
    )
