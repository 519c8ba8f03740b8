"""Webhooks: a job's webhook options, the guard against private addresses, the secrets and
the signature.

A job submitted with ``webhook`` (an http or https URL) and ``webhook_events``
(comma-separated, of ``start``, ``progress``, ``completed``; default
``completed``) gets a POST of its JSON at each of those events. Each POST is
signed the Standard Webhooks way with its client's secret (``whsec_`` + base64
of 32 random bytes): ``webhook-id``, ``webhook-timestamp`` and
``webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">``.

A URL whose host is, or resolves to, a loopback, private, link-local, or
otherwise not globally routable address is refused, at submit
(``invalid_webhook``) and again at each delivery (the delivery connects to the
address it checked), unless ``STYLEQUEUE_WEBHOOK_ALLOW_PRIVATE`` is true. The
outbox (which deliveries a job change writes) is ``shared.webhook_outbox``; the
sender, in the workers, ``worker.webhook_sender``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from shared.errors import ConfigError, InvalidInputError

EVENTS = ("start", "progress", "completed")
DEFAULT_EVENTS = ("completed",)
MAX_URL_LENGTH = 2000
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
PROGRESS_EVERY_SECONDS = 2.0  # one ``progress`` delivery per job at most this often

ALLOW_PRIVATE_VARIABLE = "STYLEQUEUE_WEBHOOK_ALLOW_PRIVATE"
RETRY_VARIABLE = "STYLEQUEUE_WEBHOOK_RETRY_SECONDS"
# The waits after each failed attempt (the first attempt is at once): 5 s, 5 min, 30 min,
# 2 h, 5 h, 10 h, 10 h, as Standard Webhooks suggests, the last repeated; a wait that would
# end more than GIVE_UP_SECONDS after the event ends then (a last attempt); an attempt
# that fails that late gives the delivery up.
DEFAULT_RETRY_SECONDS = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
GIVE_UP_SECONDS = 24 * 3600.0
TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class WebhookRequest:
    """A job's webhook: where to, and for which events (in ``EVENTS`` order)."""

    url: str
    events: tuple[str, ...]

    @property
    def events_text(self) -> str:
        return ",".join(self.events)


def allow_private(environ: Mapping[str, str] | None = None) -> bool:
    """Whether webhooks may go to private addresses (STYLEQUEUE_WEBHOOK_ALLOW_PRIVATE)."""
    raw = (os.environ if environ is None else environ).get(ALLOW_PRIVATE_VARIABLE, "")
    word = raw.strip().lower()
    if word in ("", "0", "false", "no", "off"):
        return False
    if word in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(
        f"{ALLOW_PRIVATE_VARIABLE}={raw!r} is malformed: must be true or false",
        details={"variable": ALLOW_PRIVATE_VARIABLE},
    )


def retry_schedule(environ: Mapping[str, str] | None = None) -> tuple[float, ...]:
    """The waits between attempts (STYLEQUEUE_WEBHOOK_RETRY_SECONDS: comma-separated seconds)."""
    raw = (os.environ if environ is None else environ).get(RETRY_VARIABLE, "").strip()
    if not raw:
        return DEFAULT_RETRY_SECONDS
    try:
        waits = tuple(float(part) for part in raw.split(","))
    except ValueError:
        waits = ()
    if not waits or any(not wait >= 0 for wait in waits):
        raise ConfigError(
            f"{RETRY_VARIABLE}={raw!r} is malformed: expected seconds such as 5,300,1800",
            details={"variable": RETRY_VARIABLE},
        )
    return waits


def _invalid(message: str, reason: str, field: str = "webhook") -> InvalidInputError:
    return InvalidInputError(
        message, field=field, code="invalid_webhook", details={"reason": reason}
    )


def parse_events(raw: str | None) -> tuple[str, ...]:
    """``webhook_events`` as given (None or blank: ``completed``); a 400 for an unknown one."""
    if raw is None or not raw.strip():
        return DEFAULT_EVENTS
    given = {part.strip() for part in raw.split(",") if part.strip()}
    unknown = sorted(given - set(EVENTS))
    if unknown:
        raise _invalid(
            f"webhook_events: unknown event {unknown[0]!r}; expected some of {', '.join(EVENTS)}",
            "unknown_event",
            field="webhook_events",
        )
    return tuple(event for event in EVENTS if event in given)


def parse_request(url: str | None, events: str | None) -> WebhookRequest | None:
    """The submit's webhook options, checked (a 400 ``invalid_webhook`` naming the reason);
    None when there is no ``webhook``. Its host is resolved and must be public (unless
    private addresses are allowed)."""
    if url is None or not url.strip():
        if events is not None and events.strip():
            raise _invalid("webhook_events is given without a webhook", "no_url", "webhook_events")
        return None
    parsed = parse_events(events)  # before the URL: a typo costs no DNS lookup
    url = url.strip()
    check_url(url)
    return WebhookRequest(url, parsed)


def check_url(url: str) -> list[str]:
    """The addresses ``url``'s host resolves to, all allowed; else a 400 ``invalid_webhook``."""
    if len(url) > MAX_URL_LENGTH:
        raise _invalid(f"webhook: longer than {MAX_URL_LENGTH} characters", "too_long")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _invalid(f"webhook: not a URL ({exc})", "malformed") from None
    if parts.scheme not in ("http", "https"):
        raise _invalid("webhook: must be an http:// or https:// URL", "scheme")
    host = parts.hostname
    if not host:
        raise _invalid("webhook: the URL has no host", "no_host")
    if parts.username is not None or parts.password is not None:
        raise _invalid("webhook: the URL may not carry a user or password", "credentials")
    default_port = 443 if parts.scheme == "https" else 80
    addresses = resolve(host, port or default_port)
    if not addresses:
        raise _invalid(f"webhook: the host {host!r} does not resolve", "unresolvable")
    if not allow_private():
        for address in addresses:
            if not is_public(address):
                raise _invalid(
                    f"webhook: the host {host!r} resolves to {address}, a loopback, private or "
                    f"link-local address (allowed only with {ALLOW_PRIVATE_VARIABLE}=true)",
                    "private_address",
                )
    return addresses


def resolve(host: str, port: int) -> list[str]:
    """The IP addresses ``host`` resolves to (a literal address: itself); [] if none."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    addresses: list[str] = []
    for _family, _type, _proto, _name, sockaddr in found:
        address = str(sockaddr[0]).split("%")[0]
        if address not in addresses:
            addresses.append(address)
    return addresses


def is_public(address: str) -> bool:
    """Whether ``address`` is globally routable (not loopback, private, link-local, …)."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` and the base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header's value for this message (``v1,`` + base64 HMAC)."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()
