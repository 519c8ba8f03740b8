"""StylequeueClient: the HTTP API v1 as Python methods, over httpx."""

from __future__ import annotations

import json
import mimetypes
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from client.errors import (
    APIError,
    InvalidResponseError,
    RateLimitedError,
    ServerError,
    TransportError,
    WaitTimeoutError,
    api_error_from_response,
)
from client.events import JobEvent, follow_events
from client.models import Job, JobPage, JobProgress, JobStatus, parse_queue
from client.polling import (
    DEFAULT_POLL_INTERVAL_S,
    MAX_POLL_INTERVAL_S,
    next_poll_delay,
    remaining_s,
)
from client.retry import DEFAULT_SUBMIT_RETRIES, RetryNotice, retry_after_429
from client.webhooks import WebhookDelivery

DEFAULT_TIMEOUT_S = 30.0  # per request; uploads of a few MB over a slow link fit in it
MAX_POLL_FAILURES = 3  # wait() rides out this many failed polls in a row (restarts, blips)
USER_AGENT = "stylequeue-client"

# An image to upload: a path to read, or the encoded bytes themselves.
ImageSource = str | os.PathLike[str] | bytes
ProgressCallback = Callable[[Job], None]


class StylequeueClient:
    """A connection to one stylequeue server, authenticated with one API key.

    ``transport`` replaces httpx's network transport, for example
    ``httpx.WSGITransport(app=create_app(...))`` to talk to an app in-process.
    Use it as a context manager, or call close(), to release connections.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT_S,
    ) -> None:
        if not api_key:
            raise ValueError("api_key is empty")
        self.base_url = base_url
        self._http = httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT},
            transport=transport,
            timeout=timeout,
        )

    def __enter__(self) -> StylequeueClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections."""
        self._http.close()

    # -- jobs -----------------------------------------------------------------

    def submit(
        self,
        content: ImageSource,
        styles: Sequence[ImageSource],
        params: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        *,
        cancel_after: float | None = None,
        cache: bool = True,
        retries: int = DEFAULT_SUBMIT_RETRIES,
        on_retry: RetryNotice | None = None,
        webhook: str | None = None,
        webhook_events: Sequence[str] | str | None = None,
        priority: int | None = None,
    ) -> Job:
        """Upload a content image and one or more style images; return the queued job.

        With ``idempotency_key``, submitting the same key again returns the
        first job instead of creating a second one (safe to retry).
        ``cancel_after`` (seconds): the job is canceled (``deadline_exceeded``) if not
        finished by then. ``cache=False``: computed even when it is an exact repeat of an
        earlier succeeded job (otherwise it is succeeded at once, ``cached``). A 429 (over the key's submit rate or queued jobs) is waited
        out, ``Retry-After`` seconds each time, up to ``retries`` times (0: never);
        ``on_retry(error, seconds)`` is called before each wait. Then RateLimitedError.
        ``webhook``: an http(s) URL that gets a signed POST of the job's JSON at each of
        ``webhook_events`` (of ``start``, ``progress``, ``completed``; default ``completed``).
        ``priority`` (-10..10, default 0): orders this key's own queued jobs, higher first.
        """
        if isinstance(styles, str | bytes | os.PathLike):
            raise TypeError("styles must be a sequence of images, not one image")
        files = [_upload_part("content", content, "content")]
        files += [
            _upload_part("style", style, f"style-{n}") for n, style in enumerate(styles, start=1)
        ]
        data = {"params": json.dumps(dict(params))} if params else {}
        if not cache:
            data["cache"] = "false"
        if priority is not None:
            data["priority"] = str(priority)
        if webhook is not None:
            data["webhook"] = webhook
        if webhook_events is not None:
            given = [webhook_events] if isinstance(webhook_events, str) else webhook_events
            data["webhook_events"] = ",".join(given)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        if cancel_after is not None:
            headers["Cancel-After"] = f"{cancel_after:g}"
        response = retry_after_429(
            lambda: self._request("POST", "/v1/jobs", files=files, data=data, headers=headers),
            retries=retries,
            on_retry=on_retry,
        )
        return Job.from_json(_json(response))

    def webhooks(self, job_id: str) -> list[WebhookDelivery]:
        """The job's webhook deliveries, oldest first, each with its attempts."""
        body = _json(self._request("GET", f"{_job_path(job_id)}/webhooks"))
        return [WebhookDelivery.from_json(d) for d in body["deliveries"]]

    def get(self, job_id: str) -> Job:
        """The job as it is now."""
        return Job.from_json(_json(self._request("GET", _job_path(job_id))))

    def list(
        self,
        status: JobStatus | str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> JobPage:
        """One page of this key's jobs, newest first; pass ``next_cursor`` on for the next."""
        query: dict[str, str | int] = {}
        if status is not None:
            query["status"] = JobStatus(status).value
        if limit is not None:
            query["limit"] = limit
        if cursor is not None:
            query["cursor"] = cursor
        return JobPage.from_json(_json(self._request("GET", "/v1/jobs", params=query)))

    def iter_jobs(
        self, status: JobStatus | str | None = None, page_size: int | None = None
    ) -> Iterator[Job]:
        """Every job of this key, newest first, fetching pages as it goes."""
        cursor: str | None = None
        while True:
            page = self.list(status=status, limit=page_size, cursor=cursor)
            yield from page.jobs
            if page.next_cursor is None or not page.jobs:
                return
            cursor = page.next_cursor

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running job; a finished job is returned unchanged."""
        return Job.from_json(_json(self._request("POST", f"{_job_path(job_id)}/cancel")))

    def result(self, job_id: str) -> bytes:
        """The output PNG of a succeeded job (ConflictError while it is not)."""
        return self._request("GET", f"{_job_path(job_id)}/result").content

    def preview(self, job_id: str) -> bytes:
        """The latest intermediate image of a running job."""
        return self._request("GET", f"{_job_path(job_id)}/preview").content

    def download(self, job_id: str, path: str | os.PathLike[str]) -> Path:
        """Save the result PNG to ``path``; a failed download leaves no partial file."""
        target = Path(path)
        try:
            fd, tmp_name = tempfile.mkstemp(dir=target.parent or ".", prefix=f".{target.name}.")
        except OSError as exc:  # named after the file asked for, not the temporary one
            raise type(exc)(exc.errno, exc.strerror, os.fspath(target)) from None
        try:
            with os.fdopen(fd, "wb") as out:
                self._stream_to(f"{_job_path(job_id)}/result", out)
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return target

    def events(self, job_id: str, *, last_event_id: str | None = None) -> Iterator[JobEvent]:
        """The job's live events (``status``, ``progress``, ``preview``, ``done``) as they
        happen, until ``done``: one long response, opened again after a dropped connection
        and resumed after the last event seen (``Last-Event-ID``). NotFoundError for an
        unknown job (or a server without event streams)."""
        return follow_events(
            self._http, f"{_job_path(job_id)}/events", _raise_for_error, last_event_id=last_event_id
        )

    def wait(
        self,
        job_id: str,
        *,
        poll_interval: float = DEFAULT_POLL_INTERVAL_S,
        max_poll_interval: float = MAX_POLL_INTERVAL_S,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Job:
        """Wait until the job is succeeded, failed or canceled, and return it.

        It follows the job's event stream (``events``); a server that answers 404 or
        405 for it (one from before event streams) is polled instead.
        ``on_progress`` is called with the job first and whenever its status or
        progress changes. Polls back off from ``poll_interval`` to
        ``max_poll_interval`` while nothing changes. A few failed polls in a row
        (server restarting, 5xx, 429), or dropped streams, are retried; ``timeout``
        (seconds) raises WaitTimeoutError carrying the last job seen.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            return self._wait_for_done(job_id, deadline, timeout, on_progress)
        except APIError as exc:
            if exc.status not in (404, 405):
                raise
        # No event stream here: poll (a job that does not exist is a NotFoundError there too).
        last: Job | None = None
        delay: float | None = None
        failures = 0
        while True:
            try:
                job = self.get(job_id)
                failures = 0
            except (TransportError, ServerError, RateLimitedError):
                failures += 1
                if failures > MAX_POLL_FAILURES or last is None:
                    raise
                job = last
            changed = last is None or (job.status, job.progress, job.queue) != (
                last.status,
                last.progress,
                last.queue,
            )
            if changed and on_progress is not None:
                on_progress(job)
            if job.status.is_final:
                return job
            delay = next_poll_delay(
                delay,
                initial_s=poll_interval,
                maximum_s=max_poll_interval,
                job_changed=changed and last is not None,
            )
            left = remaining_s(deadline, time.monotonic())
            if left is not None and left <= 0:
                raise WaitTimeoutError(job, timeout or 0.0)
            time.sleep(delay if left is None else min(delay, left))
            last = job

    def _wait_for_done(
        self,
        job_id: str,
        deadline: float | None,
        timeout: float | None,
        on_progress: ProgressCallback | None,
    ) -> Job:
        """``wait`` on the job's event stream."""
        last: Job | None = None
        path = f"{_job_path(job_id)}/events"
        for event in follow_events(self._http, path, _raise_for_error, deadline=deadline):
            if event.name in ("status", "done"):
                job = Job.from_json(event.data)
            elif event.name == "queue" and last is not None:
                job = replace(last, queue=parse_queue(event.data))
            elif event.name == "progress" and last is not None:
                data = event.data
                job = replace(
                    last,
                    progress=JobProgress(
                        iteration=int(data["iteration"]),
                        iterations=int(data["iterations"]),
                        percent=float(data["percent"]),
                        eta_seconds=data.get("eta_seconds"),
                    ),
                )
            else:
                continue
            changed = last is None or (job.status, job.progress) != (last.status, last.progress)
            if changed and on_progress is not None:
                on_progress(job)
            if event.name == "done" or job.status.is_final:
                return job
            last = job
        raise WaitTimeoutError(last or self.get(job_id), timeout or 0.0)

    # -- plumbing -------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise TransportError(f"{method} {self.base_url}{path}: {exc}") from exc
        _raise_for_error(response)
        return response

    def _stream_to(self, path: str, out: Any) -> None:
        try:
            with self._http.stream("GET", path) as response:
                if response.is_error:
                    response.read()
                    _raise_for_error(response)
                for chunk in response.iter_bytes():
                    out.write(chunk)
        except httpx.TransportError as exc:
            raise TransportError(f"GET {self.base_url}{path}: {exc}") from exc


def _raise_for_error(response: httpx.Response) -> None:
    if not response.is_error:
        return
    try:
        body = response.json()
    except ValueError:
        body = None
    error = api_error_from_response(response.status_code, body)
    if isinstance(error, RateLimitedError):
        error.retry_after = _seconds(response.headers.get("Retry-After"))
    raise error


def _seconds(raw: str | None) -> float | None:
    # Retry-After as delta-seconds (the form this API sends); an HTTP date is not read.
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise InvalidResponseError(
            f"{response.request.method} {response.request.url.path}: the body is not JSON"
        ) from None


def _job_path(job_id: str) -> str:
    if not job_id:
        raise ValueError("job_id is empty")
    # Quote everything: an id is a path segment, never a path.
    return f"/v1/jobs/{quote(str(job_id), safe='')}"


def _upload_part(field: str, source: ImageSource, default_name: str) -> tuple[str, Any]:
    if isinstance(source, bytes):
        return field, (default_name, source, "application/octet-stream")
    path = Path(source)
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return field, (path.name, path.read_bytes(), content_type)
