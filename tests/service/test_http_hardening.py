"""Hostile bytes and browser protections, through a real ``stylequeue api`` (gunicorn) over HTTP.

Requests are written with ``http.client`` so that header values go out as the raw bytes
given (httpx and browsers refuse to send some of them). On each backend.
"""

from __future__ import annotations

import http.client
import json
import re
import secrets
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote_from_bytes

import pytest
from api_process import ApiProcess
from processes import free_port

from shared.auth import create_client
from shared.db import Database

ADMIN_KEY = "sq_admin_" + secrets.token_urlsafe(16)
METRICS_KEY = "sq_metrics_" + secrets.token_urlsafe(16)
NON_ASCII = [
    "sq_caf\u00e9".encode(),  # UTF-8
    b"sq_\xe9\xff\xfe",  # not UTF-8 at all
    ADMIN_KEY.encode() + "\u2603".encode(),  # the admin key and one character more
]
CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> dict:
        assert self.headers.get_content_type() == "application/json", self.body[:300]
        value: dict = json.loads(self.body)
        return value

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


@dataclass
class Api:
    base_port: int
    client_key: str
    job_id: str
    cookies: dict[str, str] = field(default_factory=dict)

    def request(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str | bytes] | None = None,
        body: bytes | None = None,
        *,
        cookies: dict[str, str] | None = None,
    ) -> Answer:
        """One request on a fresh connection; header values may be raw bytes."""
        connection = http.client.HTTPConnection("127.0.0.1", self.base_port, timeout=30)
        try:
            sent: dict[str, str | bytes] = dict(headers or {})
            jar = self.cookies if cookies is None else cookies
            if jar:
                sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in jar.items())
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            answer = Answer(response.status, response.headers, response.read())
        finally:
            connection.close()
        for value in answer.headers.get_all("Set-Cookie") or []:
            name, _, rest = value.partition("=")
            jar[name] = rest.split(";", 1)[0]
        return answer

    def log_in(self, key: str = ADMIN_KEY) -> str:
        """Log in through the form (as a browser would); returns the session's CSRF token."""
        self.cookies.clear()
        page = self.request("GET", "/admin/login")
        found = CSRF_INPUT.search(page.text)
        assert found
        body = f"key={key}&csrf_token={found.group(1)}&next=/admin".encode()
        answer = self.request("POST", "/admin/login", FORM, body)
        assert answer.status == 303, answer.text[:500]
        found = CSRF_INPUT.search(self.request("GET", "/admin/workers").text)
        assert found
        return found.group(1)


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture(scope="module")
def api(
    database_url: str, redis_url: str, redis_prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    """``stylequeue api`` with an admin key and a metrics key; a client key and one queued job."""
    env = {
        "STYLEQUEUE_DATABASE_URL": database_url,
        "STYLEQUEUE_REDIS_URL": redis_url,
        "STYLEQUEUE_REDIS_PREFIX": f"{redis_prefix}hardening:",  # no worker: jobs stay queued
        "STYLEQUEUE_DATA_DIR": str(tmp_path_factory.mktemp("hardening-data")),
        "STYLEQUEUE_ADMIN_KEY": ADMIN_KEY,
        "STYLEQUEUE_METRICS_KEY": METRICS_KEY,
    }
    database = Database(database_url)
    with database.session() as session:
        _, client_key = create_client(session, f"hardening-{secrets.token_hex(3)}")
    database.dispose()
    process = ApiProcess(env, free_port(), tmp_path_factory.mktemp("hardening-log") / "api.log")
    process.start()
    try:
        process.wait_ready()
        api = Api(process.port, client_key, "")
        api.job_id = _submit(api)
        yield api
    finally:
        process.stop()
    assert "Traceback" not in process.log(), process.log()[-3000:]


def _submit(api: Api) -> str:
    data = Path(__file__).parent.parent / "data"
    boundary = "hardening" + secrets.token_hex(4)
    parts = [
        ("content", "content.png", (data / "tubingen.png").read_bytes()),
        ("style", "style.png", (data / "starry_night.png").read_bytes()),
    ]
    body = b""
    for name, filename, content in parts:
        body += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                f'filename="{filename}"\r\nContent-Type: image/png\r\n\r\n'
            ).encode()
            + content
            + b"\r\n"
        )
    body += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n\r\n'
        '{"size": 32, "iterations": 2, "scales": 1}\r\n'
        f"--{boundary}--\r\n"
    ).encode()
    headers = {
        "Authorization": f"Bearer {api.client_key}",
        "Content-Type": f"multipart/form-data; boundary={boundary}",
    }
    answer = api.request("POST", "/v1/jobs", headers, body, cookies={})
    assert answer.status == 202, answer.text[:500]
    job_id: str = answer.json()["id"]
    return job_id


# ---------------------------------------------------------------- non-ASCII secrets


@pytest.mark.slow
@pytest.mark.parametrize("key", NON_ASCII, ids=["utf-8", "not-utf-8", "admin-key-and-more"])
def test_a_non_ascii_bearer_key_is_a_401_on_every_endpoint(api: Api, key: bytes) -> None:
    for method, path in (
        ("GET", "/v1/jobs"),
        ("GET", f"/v1/jobs/{api.job_id}"),
        ("POST", f"/v1/jobs/{api.job_id}/cancel"),
        ("POST", "/v1/jobs"),
        ("GET", "/v1/admin/jobs"),
        ("GET", "/v1/admin/stats"),
        ("DELETE", f"/v1/admin/jobs/{api.job_id}/files"),
        ("GET", "/metrics"),
    ):
        answer = api.request(method, path, {"Authorization": b"Bearer " + key}, cookies={})
        assert answer.status == 401, (method, path, answer.status, answer.text[:300])
        assert answer.json()["error"]["code"] == "invalid_api_key", (method, path)
    status = api.request(
        "GET", f"/v1/jobs/{api.job_id}", {"Authorization": f"Bearer {api.client_key}"}, cookies={}
    )
    assert status.json()["status"] == "queued", "a rejected request changed the job"


@pytest.mark.slow
@pytest.mark.parametrize("key", NON_ASCII, ids=["utf-8", "not-utf-8", "admin-key-and-more"])
def test_a_non_ascii_admin_login_key_is_the_login_pages_401(api: Api, key: bytes) -> None:
    api.cookies.clear()
    found = CSRF_INPUT.search(api.request("GET", "/admin/login").text)
    assert found
    token = b"&csrf_token=" + found.group(1).encode() + b"&next=/admin"
    # As a browser sends it (percent-encoded UTF-8), then as raw bytes.
    for raw in (quote_from_bytes(key).encode(), key):
        answer = api.request("POST", "/admin/login", FORM, b"key=" + raw + token)
        assert answer.headers.get_content_type() == "text/html", answer.text[:300]
        if _is_utf8(raw):
            assert answer.status == 401, answer.text[:500]
            assert 'id="login-error"' in answer.text
            assert "the API key is not valid" in answer.text
        else:  # a form body that is not UTF-8 is no form at all: its token is missing
            assert answer.status == 403, answer.text[:500]
            assert "security token" in answer.text
    assert api.request("GET", "/admin").status == 302, "still logged out"


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize(
    "token", ["caf\u00e9".encode(), b"\xe9\xff\xfe"], ids=["utf-8", "not-utf-8"]
)
def test_a_non_ascii_csrf_token_is_a_403(api: Api, token: bytes) -> None:
    csrf = api.log_in()
    path = f"/admin/jobs/{api.job_id}/cancel"
    header = api.request("POST", path, {"X-CSRF-Token": token, "Accept": "application/json"})
    assert header.status == 403, header.text[:500]
    assert header.json()["error"]["code"] == "csrf_failed"
    # The token as it was shown, with a non-ASCII character more: in the form, then the header.
    form = api.request("POST", path, FORM, b"csrf_token=" + csrf.encode() + token)
    assert form.status == 403 and "security token" in form.text, form.text[:500]
    joined = api.request("POST", path, {"X-CSRF-Token": csrf.encode() + token})
    assert joined.status == 403, joined.text[:500]
    # At login too (a session with a token exists once the form was shown).
    api.cookies.clear()
    assert CSRF_INPUT.search(api.request("GET", "/admin/login").text)
    body = f"key={ADMIN_KEY}&csrf_token=".encode() + token
    login = api.request("POST", "/admin/login", FORM, body)
    assert login.status == 403 and "security token" in login.text, login.text[:500]
    assert api.request("GET", "/admin").status == 302, "the login was refused"
    status = api.request(
        "GET", f"/v1/jobs/{api.job_id}", {"Authorization": f"Bearer {api.client_key}"}, cookies={}
    )
    assert status.json()["status"] == "queued", "a refused cancel changed the job"


# ---------------------------------------------------------------- headers on every response

INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I)
INLINE_HANDLER = re.compile(r"<[^>]+\son[a-z]+\s*=", re.I)
INLINE_STYLE = re.compile(r"<style\b|<[^>]+\sstyle\s*=", re.I)


@pytest.mark.slow
def test_every_response_carries_nosniff_deny_and_a_csp(api: Api) -> None:
    client = {"Authorization": f"Bearer {api.client_key}"}
    job = api.job_id
    anonymous = [
        ("GET", "/healthz", {}),
        ("GET", "/openapi.json", {}),
        ("GET", "/docs", {}),
        ("GET", "/docs/static/docs.js", {}),
        ("GET", "/metrics", {"Authorization": f"Bearer {METRICS_KEY}"}),
        ("GET", "/metrics", {}),  # 401
        ("GET", "/v1/jobs", client),
        ("GET", "/v1/jobs", {}),  # 401
        ("GET", f"/v1/jobs/{job}/result", client),  # 409
        ("DELETE", "/v1/jobs", client),  # 405
        ("GET", "/nothing", {}),  # 404
        ("GET", "/admin", {}),  # 302 to the login
        ("GET", "/admin/login", {}),
        ("GET", "/admin/static/admin.js", {}),
    ]
    seen = set()
    for method, path, headers in anonymous:
        answer = api.request(method, path, headers, cookies={})
        seen.add(answer.status)
        _assert_protected(path, answer)
    api.log_in()
    for path in (
        "/admin",
        f"/admin/jobs/{job}",
        f"/admin/jobs/{job}/files/content",  # the upload, byte for byte
        f"/admin/jobs/{job}/thumbs/content",
        f"/admin/jobs/{job}/thumbs/result",  # an SVG placeholder
        "/admin/stats",
        "/admin/workers",
        f"/admin/live?id={job}",
        "/admin/nothing",  # the 404 page
        "/admin?worker=%00",  # the 400 page
    ):
        answer = api.request("GET", path)
        seen.add(answer.status)
        _assert_protected(path, answer)
    assert {200, 302, 400, 401, 404, 405, 409} <= seen


@pytest.mark.slow
def test_the_serving_layers_own_answers_carry_them_too(api: Api) -> None:
    """A body that stops arriving is answered 408 before the app sees the request."""
    with socket.create_connection(("127.0.0.1", api.base_port), timeout=60) as sock:
        sock.sendall(
            b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: 1000\r\n\r\nonly a few bytes"
        )
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    head = received.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    status_line, *lines = head.split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}
    assert status_line.split(" ")[1] == "408", head
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]


def _assert_protected(path: str, answer: Answer) -> None:
    assert answer.headers["X-Content-Type-Options"] == "nosniff", path
    assert answer.headers["X-Frame-Options"] == "DENY", path
    policy = answer.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in policy, path
    if path.startswith("/admin"):
        directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
        assert directives["script-src"] == "'self'", path
        assert directives["style-src"] == "'self'", path
        assert directives["default-src"] == "'self'", path
        assert "unsafe" not in policy, path
    elif path.startswith("/docs"):  # the vendored API reference: this origin's files only
        directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
        assert directives["default-src"] == "'none'", path
        assert directives["script-src"] == "'self'", path
        assert directives["style-src"] == "'self'", path
        assert "unsafe" not in policy, path
    else:
        assert "default-src 'none'" in policy and "script" not in policy, path


@pytest.mark.slow
def test_admin_pages_need_no_inline_script_or_style(api: Api) -> None:
    """What the /admin policy forbids is not in the pages (the browser test runs them)."""
    pages = [api.request("GET", "/admin/login", cookies={})]
    api.log_in()
    for path in ("/admin", f"/admin/jobs/{api.job_id}", "/admin/stats", "/admin/workers"):
        pages.append(api.request("GET", path))
    pages.append(api.request("GET", "/admin/nothing"))
    for page in pages:
        assert page.headers.get_content_type() == "text/html"
        html = page.text
        assert not INLINE_SCRIPT.search(html), INLINE_SCRIPT.search(html)
        assert not INLINE_HANDLER.search(html), INLINE_HANDLER.search(html)
        assert not INLINE_STYLE.search(html), INLINE_STYLE.search(html)
        assert 'src="/admin/static/admin.js"' in html


# ---------------------------------------------------------------- logout


@pytest.mark.slow
def test_a_session_cookie_copied_before_logout_is_no_login_after(api: Api) -> None:
    other = Api(api.base_port, api.client_key, api.job_id)
    other.log_in()  # a second session of the same admin: it must outlive the first's logout
    csrf = api.log_in()
    copied = dict(api.cookies)
    assert api.request("GET", "/admin", cookies=copied).status == 200
    logout = api.request("POST", "/admin/logout", FORM, f"csrf_token={csrf}".encode())
    assert logout.status == 303
    assert api.request("GET", "/admin").status == 302
    # The copy, replayed as it was.
    page = api.request("GET", "/admin", cookies=dict(copied))
    assert page.status == 302 and page.headers["Location"].startswith("/admin/login"), page.status
    live = api.request("GET", f"/admin/live?id={api.job_id}", cookies=dict(copied))
    assert live.status == 401 and live.json()["error"]["code"] == "login_required"
    cancel = api.request(
        "POST",
        f"/admin/jobs/{api.job_id}/cancel",
        {**FORM, "Accept": "application/json"},
        f"csrf_token={csrf}".encode(),
        cookies=dict(copied),
    )
    assert cancel.status == 401, cancel.text[:300]
    status = api.request(
        "GET", f"/v1/jobs/{api.job_id}", {"Authorization": f"Bearer {api.client_key}"}, cookies={}
    )
    assert status.json()["status"] == "queued", "the replayed cookie canceled a job"
    assert other.request("GET", "/admin").status == 200, "another session was ended too"
