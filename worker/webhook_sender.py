"""The webhook sender: a daemon thread in each worker process that delivers the outbox.

Every ``POLL_SECONDS`` it claims the due deliveries (``shared.webhook_outbox``:
one conditional UPDATE each, so two senders never make the same attempt at
once) and POSTs each: the job JSON as its client saw it when the event happened
(``shared.job_json``, the same function the API answers with; written with the
delivery, or for a job born finished made at the first attempt, and resent as is), signed with the client's secret as it is at that attempt. The host is
resolved and checked again (``shared.webhooks.check_url``) and the connection
made to the address checked, the host's name kept for the ``Host`` header and
TLS. A 2xx is delivered; anything else (another status, a redirect, a timeout
of ``TIMEOUT_SECONDS``, a refused connection, an address now refused) is due
again after the retry schedule's next wait.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import httpx

from shared import webhook_outbox
from shared.db import Database
from shared.errors import InvalidInputError
from shared.job_json import job_dict
from shared.job_store import poll_job
from shared.webhooks import TIMEOUT_SECONDS, check_url, retry_schedule, sign

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
HOLD_SECONDS = TIMEOUT_SECONDS + 20.0  # a claim outlives one attempt; a dead sender's expires
USER_AGENT = "stylequeue-webhooks/1"


def job_body(db: Database, job_id: uuid.UUID) -> str:
    """The job's JSON, as ``GET /v1/jobs/{id}`` would answer it now."""
    return json.dumps(job_dict(poll_job(db, job_id, client_id=None)), separators=(",", ":"))


def send(due: webhook_outbox.Due, body: str) -> tuple[int | None, str | None]:
    """POST ``body`` for ``due``; (the status code, None) or (None or the code, the error)."""
    if due.secret is None:
        return None, "the client has no webhook signing secret"
    try:
        addresses = check_url(due.url)
    except InvalidInputError as exc:
        return None, exc.message
    parts = urlsplit(due.url)
    host = parts.hostname or ""
    address = addresses[0]
    literal = f"[{address}]" if ":" in address else address
    netloc = literal if parts.port is None else f"{literal}:{parts.port}"
    target = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    timestamp = int(time.time())
    data = body.encode()
    headers = {
        "Host": parts.netloc.rsplit("@", 1)[-1],
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": due.message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(due.secret, due.message_id, timestamp, data),
        "stylequeue-event": due.event,
    }
    extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
    try:
        with httpx.Client(timeout=TIMEOUT_SECONDS, follow_redirects=False, trust_env=False) as http:
            response = http.post(target, content=data, headers=headers, extensions=extensions)
    except httpx.TimeoutException:
        return None, f"timed out after {TIMEOUT_SECONDS:g} s"
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"[:500]
    if 200 <= response.status_code < 300:
        return response.status_code, None
    return response.status_code, f"answered {response.status_code}"


class WebhookSender:
    """Delivers the due webhooks from a daemon thread, for as long as the process lives."""

    def __init__(self, db: Database, name: str) -> None:
        self._db = db
        self._name = name
        self._schedule = retry_schedule()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="stylequeue-webhooks", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=TIMEOUT_SECONDS + 1)

    def _run(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            try:
                self.deliver_due()
            except Exception:  # the database away a while: try again at the next round
                log.warning("webhooks: a round of deliveries failed", exc_info=True)

    def deliver_due(self) -> int:
        """Make one attempt of each delivery due now; returns how many were made."""
        with self._db.session() as session:
            claimed = webhook_outbox.claim_due(session, self._name, hold_seconds=HOLD_SECONDS)
            for due in claimed:
                body = due.body
                if body is None:
                    body = job_body(self._db, due.job_id)
                    if not webhook_outbox.store_body(session, due, body):
                        continue  # redelivered or taken over meanwhile
                started = time.monotonic()
                status_code, error = send(due, body)
                state = webhook_outbox.record_attempt(
                    session,
                    due,
                    status_code=status_code,
                    error=error,
                    seconds=time.monotonic() - started,
                    schedule=self._schedule,
                )
                if error is not None:
                    log.info(
                        "webhook %s (%s of job %s) to %s: %s; now %s",
                        due.message_id,
                        due.event,
                        due.job_id,
                        due.url,
                        error,
                        state,
                    )
        return len(claimed)


_sender: WebhookSender | None = None
_lock = threading.Lock()


def start_sender(db: Database, name: str) -> None:
    """Start this process's sender (once)."""
    global _sender
    with _lock:
        if _sender is None:
            _sender = WebhookSender(db, name)
            _sender.start()
