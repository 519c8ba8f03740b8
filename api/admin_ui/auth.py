"""Who may use /admin: a login form takes an admin API key and leaves a signed session cookie.

Browsers cannot send a bearer header by themselves, so the page logs in once:
the key is checked like a bearer key (``shared.auth.authenticate``) and must be
an admin's. The login makes a server-side session (``shared.admin_sessions``:
an ``admin_sessions`` row, stored as the sha256 of a random token) and the
cookie carries that token, the admin's name and the CSRF token, signed (Flask's
itsdangerous session) with ``STYLEQUEUE_SECRET_KEY`` or, when unset, a random
key kept in the data dir so that every gunicorn process and every restart
agree. Every request looks the row up: logging out deletes it, so a copy of the
cookie taken before is no login afterwards. The cookie is HttpOnly,
SameSite=Strict, scoped to ``/admin``, Secure over HTTPS; the session ends
after ``SESSION_HOURS``.

Every POST also carries a CSRF token (a hidden form field or the
``X-CSRF-Token`` header), stored in the session and compared in constant time.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from flask import Flask, Request, request, session, url_for
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface

from api.services import EXTENSION_KEY, db_session, services
from shared.admin_sessions import end_admin_session, session_admin, start_admin_session
from shared.auth import Principal, authenticate, same_secret
from shared.errors import ForbiddenError, UnauthorizedError
from shared.settings import Settings

SESSION_COOKIE = "stylequeue_admin"
SESSION_HOURS = 12
SECRET_FILE = "secret_key"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
MAX_NEXT_LENGTH = 2000


class _AdminSessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie session, Secure whenever the request came over HTTPS.

    The signing key is loaded on the first /admin request (Flask opens the
    session before any view or hook runs); other paths never need it.
    """

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if not app.secret_key and request.path.startswith("/admin"):
            ensure_secret_key(app, app.extensions[EXTENSION_KEY].settings)
        return super().open_session(app, request)

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(request.is_secure) or super().get_cookie_secure(app)


def init_app(app: Flask) -> None:
    app.session_interface = _AdminSessionInterface()
    app.config.update(
        SESSION_COOKIE_NAME=SESSION_COOKIE,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_PATH="/admin",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=SESSION_HOURS),
    )


def ensure_secret_key(app: Flask, settings: Settings) -> None:
    """Give the app its signing key on the first /admin request (nothing else needs one)."""
    if not app.secret_key:
        app.secret_key = settings.secret_key or read_or_create_secret(settings.data_dir)


def read_or_create_secret(data_dir: Path) -> str:
    """The key in ``data_dir/secret_key``, created once: concurrent processes agree on it.

    The file appears complete or not at all: the key is written to a temp file
    that is then hard-linked to the final name, which fails if another process
    got there first (then its key is read).
    """
    path = data_dir / SECRET_FILE
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=data_dir, prefix=f".{SECRET_FILE}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        with contextlib.suppress(FileExistsError):  # another process's key won
            os.link(tmp, path)
    finally:
        os.unlink(tmp)
    return _read_secret(path)


def _read_secret(path: Path) -> str:
    key = path.read_text().strip()
    if len(key) < 32:
        raise RuntimeError(f"{path} holds no usable key; remove it to make a new one")
    return key


def csrf_token() -> str:
    """This session's CSRF token (made on first use)."""
    token = session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(24)
        session["csrf"] = token
    return token


def check_csrf(req: Request) -> None:
    """ForbiddenError unless the POST carries this session's token."""
    expected = session.get("csrf")
    sent = req.headers.get(CSRF_HEADER) or req.form.get(CSRF_FIELD) or ""
    if not isinstance(expected, str) or not same_secret(sent, expected):
        raise ForbiddenError(
            "the form's security token is missing or stale: reload the page and try again",
            code="csrf_failed",
        )


def log_in(key: str) -> Principal:
    """Check an admin key and start the session; Unauthorized/Forbidden with a clear message."""
    key = key.strip()
    if not key:
        raise UnauthorizedError("enter an admin API key", code="missing_api_key")
    principal = authenticate(db_session(), key, admin_key=services().settings.admin_key)
    if not principal.is_admin:
        raise ForbiddenError(
            f"the key of client {principal.name!r} is not an admin key: use STYLEQUEUE_ADMIN_KEY "
            "or a key made with 'stylequeue keys create NAME --admin'",
            code="not_admin",
        )
    token = secrets.token_urlsafe(32)
    start_admin_session(db_session(), token, principal.client_id, hours=SESSION_HOURS)
    session.clear()
    session.permanent = True
    session["sid"] = token
    session["admin_name"] = principal.name
    session["login_at"] = int(time.time())
    session["csrf"] = secrets.token_urlsafe(24)
    return principal


def log_out() -> None:
    """End this session on the server (every copy of its cookie) and clear the cookie."""
    token = session.get("sid")
    if isinstance(token, str):
        end_admin_session(db_session(), token)
    session.clear()


def current_admin() -> Principal | None:
    """The logged-in admin: the cookie's session must exist on the server, be unexpired,
    and its client must still be an admin."""
    token = session.get("sid")
    if not isinstance(token, str):
        if "admin_id" in session:  # a cookie from before server-side sessions
            session.clear()
        return None
    admin = session_admin(db_session(), token)
    if admin is None:
        session.clear()
    return admin


def safe_next(raw: str | None) -> str:
    """Where to go after a login or an action: only our own pages (an open redirect would
    make the login form a phishing aid); the job table otherwise."""
    default = url_for("admin_ui.jobs_page")
    if not raw or not raw.startswith("/admin") or raw.startswith("//") or "\\" in raw:
        return default
    if len(raw) > MAX_NEXT_LENGTH or not raw.isascii() or not raw.isprintable():
        return default  # a Location header takes neither control characters nor raw non-ASCII
    if raw.startswith(("/admin/login", "/admin/logout")):
        return default
    return raw
