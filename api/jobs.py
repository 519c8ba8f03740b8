"""The client endpoints: submit, get, list, cancel, result, preview (API v1)."""

from __future__ import annotations

import functools
import json
import logging
import uuid

from flask import Blueprint, Response, redirect, request, send_file
from redis.exceptions import RedisError
from werkzeug.wrappers import Response as BaseResponse

from api.auth import current_principal
from api.limits import check_submit_limits, quota_headers, read_cancel_after
from api.multipart import read_form
from api.services import db_session, queue_snapshot, read_session, services
from api.uploads import (
    check_same_request,
    read_cache_field,
    read_idempotency_key,
    read_priority_field,
    read_submission,
    replay_digest,
)
from api.webhooks import read_webhook_fields
from shared import follows, job_list, job_store, jobs, submissions
from shared.admin_reads import files_gone_reason
from shared.errors import ConflictError, InvalidInputError, NotFoundError
from shared.job_json import job_dict, job_json
from shared.job_store import parse_job_id
from shared.job_view import JobView
from shared.logging import log_cancel_requested, log_job_created
from shared.memory_fit import LiveBudgets, live_budgets
from shared.models import JobStatus, utcnow
from shared.pagination import Cursor, parse_limit
from shared.queue_position import QueueSnapshot
from shared.result_cache import CacheRequest
from shared.storage import committed_preview, committed_result
from shared.submissions import enqueue_or_leave_queued

log = logging.getLogger(__name__)
blueprint = Blueprint("jobs", __name__, url_prefix="/v1/jobs")


def _job_response(
    job: JobView,
    status: int = 200,
    budgets: LiveBudgets | None = None,
    queue: QueueSnapshot | None = None,
) -> Response:
    return Response(
        job_json(job, budgets=budgets, queue=queue), status=status, mimetype="application/json"
    )


@blueprint.post("")
def submit_job() -> Response:
    principal = current_principal()
    svc = services()
    session = db_session()
    key = read_idempotency_key(request.headers.get("Idempotency-Key"))
    deadline_at = read_cancel_after(request.headers.get("Cancel-After"))
    form = read_form(request)
    serve_from_cache = read_cache_field(form)
    priority = read_priority_field(form)
    webhook = read_webhook_fields(form, principal.client_id)
    if key is not None:
        replayed = _replay(principal.client_id, key, replay_digest(form))
        if replayed is not None:
            return replayed
    # Before the uploads are decoded or stored: a 429 costs neither.
    quota = check_submit_limits(principal.client_id)
    submission = read_submission(
        form,
        max_upload_bytes=svc.settings.max_upload_bytes,
        max_image_pixels=svc.settings.max_image_pixels,
    )
    digest = submission.digest
    job, created = submissions.create_job(
        session,
        svc.storage,
        client_id=principal.client_id,
        params=submission.params,
        content=submission.content,
        styles=submission.styles,
        idempotency_key=key,
        request_digest=digest,
        warnings=submission.warnings,
        enqueue=svc.publisher.publish,
        db=svc.db,
        deadline_at=deadline_at,
        cache=CacheRequest.of(svc.settings, serve=serve_from_cache),
        webhook=webhook,
        priority=priority,
        queue_name=svc.settings.redis_prefix,  # the key space its message goes to
        memory_estimate=submission.memory_estimate,
        batch_shape=submission.batch_shape,
    )
    if not created:
        # Another request with this key committed first: answered as a replay of it.
        replayed = _replay(principal.client_id, key, digest) if key is not None else None
        return _replayed(job) if replayed is None else replayed
    log_job_created(job.id, client_id=principal.client_id, n_styles=len(submission.styles))
    # No queue place: the submit stays as cheap as it was (the next poll has it).
    response = _job_response(job, 202, _budgets_for([job]))
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    response.headers.update(quota_headers(quota))
    return response


def _replay(client_id: int, key: str, digest: str | None) -> Response | None:
    """The answer to a request with a used Idempotency-Key (None: the key is new)."""
    replay = job_store.find_by_idempotency_key(read_session(), client_id, key)
    if replay is None:
        return None
    # The same key must come with the same request, or it answers another one.
    check_same_request(replay, key, digest)
    return _replayed(JobView.of(replay))


def _replayed(job: JobView) -> Response:
    # The same Idempotency-Key again: the original job, created nothing.
    if job.status is JobStatus.QUEUED:
        # A client retries when it got no answer: the API may have died between the
        # commit and the enqueue. Send the id again rather than wait for the
        # reconciler; a second message for a job is harmless (the claim is a no-op).
        try:
            services().publisher.publish(job.id)
        except RedisError as exc:
            log.warning("job %s: could not re-send it on a replay (%s)", job.id, exc)
    response = _job_response(job, 200, queue=_queue_for([job]))
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    response.headers["Idempotent-Replayed"] = "true"
    return response


@blueprint.get("")
def list_jobs() -> Response:
    principal = current_principal()
    raw_status = request.args.get("status")
    status = None
    if raw_status:
        try:
            status = JobStatus(raw_status)
        except ValueError:
            raise InvalidInputError(
                f"status: must be one of {', '.join(s.value for s in JobStatus)}",
                field="status",
                code="invalid_status",
            ) from None
    raw_cursor = request.args.get("cursor")
    page = job_list.list_jobs(
        read_session(),
        client_id=principal.client_id,
        status=status,
        limit=parse_limit(request.args.get("limit")),
        cursor=Cursor.decode(raw_cursor) if raw_cursor else None,
    )
    now = utcnow()
    budgets = _budgets_for(page.jobs)
    queue = _queue_for(page.jobs)
    body = {
        "jobs": [job_dict(j, now, budgets, queue) for j in page.jobs],
        "next_cursor": page.next_cursor,
    }
    return Response(json.dumps(body, separators=(",", ":")), mimetype="application/json")


@blueprint.get("/<job_id>")
def get_job(job_id: str) -> Response:
    principal = current_principal()
    job = job_store.poll_job(services().db, parse_job_id(job_id), client_id=principal.client_id)
    return _job_response(job, budgets=_budgets_for([job]), queue=_queue_for([job]))


def _queue_for(shown: list[JobView]) -> QueueSnapshot | None:
    """The fair order's snapshot when a job shown is queued (else None: no query); read at
    most once a second per process (``shared.queue_position``)."""
    queued = [j.created_at for j in shown if j.status is JobStatus.QUEUED]
    return queue_snapshot(read_session, max(queued)) if queued else None


def _budgets_for(shown: list[JobView]) -> LiveBudgets | None:
    """The live workers' budgets when a job shown is queued with an estimate (else None:
    no query); read at most once a second per process (``shared.memory_fit``)."""
    if any(j.status is JobStatus.QUEUED and j.memory_estimate is not None for j in shown):
        return live_budgets(read_session())
    return None


@blueprint.post("/<job_id>/cancel")
def cancel_job(job_id: str) -> Response:
    principal = current_principal()
    session = db_session()
    job = jobs.cancel_job(session, parse_job_id(job_id), client_id=principal.client_id)
    log_cancel_requested(job.id, client_id=principal.client_id, status=job.status.value)
    if job.status is JobStatus.CANCELED:  # an identical job it led takes the run over
        svc = services()
        send = functools.partial(enqueue_or_leave_queued, session, enqueue=svc.publisher.publish)
        follows.settle_or_leave(session, svc.storage, job.id, send)
        session.refresh(job)
    return _job_response(JobView.of(job))


@blueprint.get("/<job_id>/result")
def get_result(job_id: str) -> BaseResponse:
    principal = current_principal()
    session = read_session()
    job = job_store.get_job(session, parse_job_id(job_id), client_id=principal.client_id)
    if job.status is not JobStatus.SUCCEEDED:
        raise ConflictError(
            f"job {job.id} is {job.status.value}; a result exists only once it has succeeded",
            code="job_not_succeeded",
            details={"status": job.status.value},
        )
    # Only the file the row names: the one the attempt that finished the job wrote.
    return _png(
        job.id,
        committed_result(job.result_file),
        "result.png",
        missing_code="result_missing",
        missing_message=f"its result file is gone ({files_gone_reason(session, job.id)})",
    )


@blueprint.get("/<job_id>/preview")
def get_preview(job_id: str) -> BaseResponse:
    principal = current_principal()
    parsed = parse_job_id(job_id)
    session = read_session()
    job = job_store.get_job(session, parsed, client_id=principal.client_id)
    name = committed_preview(job.preview_file)
    owner = job.follows or job.id  # a follower's preview is its leader's (shared.follows)
    if job.status is JobStatus.RUNNING and not services().storage.exists(owner, name):
        # The worker replaced the preview between the read of the row and the file's
        # (it removes the one it replaced): the row names the new one now.
        session.refresh(job)
        name = committed_preview(job.preview_file)
    return _png(owner, name, "preview.png", missing_code="no_preview")


def _png(
    job_id: uuid.UUID,
    name: str,
    download_as: str,
    *,
    missing_code: str,
    missing_message: str | None = None,
) -> BaseResponse:
    svc = services()
    storage = svc.storage
    message = missing_message or f"it has no {download_as.removesuffix('.png')} yet"
    missing = NotFoundError(f"job {job_id}: {message}", code=missing_code)
    download_name = f"{job_id}-{download_as}"
    path = storage.local_path(job_id, name)
    if path is not None:
        try:
            # Opened here, not by name later: a preview replaced meanwhile stays readable.
            opened = path.open("rb")
        except FileNotFoundError:
            raise missing from None
        return send_file(opened, mimetype="image/png", max_age=0, download_name=download_name)
    if svc.settings.storage_redirect:
        if not storage.exists(job_id, name):
            raise missing
        url = storage.presigned_url(job_id, name)
        if url is not None:
            response = redirect(url, code=303)
            response.headers["Cache-Control"] = "no-store"  # the URL expires
            return response
    try:
        data = storage.get(job_id, name)
    except NotFoundError:
        raise missing from None
    response = Response(data, mimetype="image/png")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["Content-Disposition"] = f'inline; filename="{download_name}"'
    return response
