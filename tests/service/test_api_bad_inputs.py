"""Every bad input is a 4xx JSON error with its own code, and writes nothing (no row, no file)."""

from __future__ import annotations

import base64
import io
import json
import re
import secrets
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from flask.testing import FlaskClient
from PIL import Image
from werkzeug.test import TestResponse

from api.services import EXTENSION_KEY
from shared.auth import create_client
from shared.params import MAX_STYLES
from tests.service.conftest import TINY_PARAMS

MAX_UPLOAD_BYTES = 256 * 1024  # tests/conftest.py's service_env
MAX_IMAGE_PIXELS = 1_000_000

Images = Callable[[str], bytes]


def png_of(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 100, 50)).save(buffer, format="PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims to be ``width`` x ``height`` but carries no pixels: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def dds_with_unknown_pixel_format() -> bytes:
    """A DDS header whose FourCC Pillow does not know: its plugin raises NotImplementedError."""
    pixel_format = struct.pack("<II4sIIIII", 32, 0x4, b"ZZZZ", 0, 0, 0, 0, 0)
    header = (
        struct.pack("<IIIIIII", 124, 0x1007, 4, 4, 0, 0, 0)
        + b"\0" * 44
        + pixel_format
        + struct.pack("<IIIII", 0x1000, 0, 0, 0, 0)
    )
    return b"DDS " + header + b"\0" * 64


def incompressible(n_bytes: int) -> bytes:
    # Random-looking bytes that still start like a PNG: only the size is wrong.
    return png_of(8, 8) + bytes((i * 7919) % 251 for i in range(n_bytes))


@dataclass(frozen=True)
class Case:
    name: str
    status: int
    code: str
    field: str | None
    send: Callable[[FlaskClient, dict[str, str], Images, str], TestResponse]


def multipart(
    http: FlaskClient,
    headers: dict[str, str],
    *,
    content: list[bytes] | None,
    styles: list[bytes] | None,
    params: str | None = '{"size": 32, "iterations": 2, "scales": 1}',
) -> TestResponse:
    data: dict[str, Any] = {}
    if content is not None:
        data["content"] = [(io.BytesIO(c), f"c{i}.png") for i, c in enumerate(content)]
    if styles is not None:
        data["style"] = [(io.BytesIO(s), f"s{i}.png") for i, s in enumerate(styles)]
    if params is not None:
        data["params"] = params
    return http.post("/v1/jobs", data=data, headers=headers, content_type="multipart/form-data")


def submit_with(
    **overrides: Any,
) -> Callable[[FlaskClient, dict[str, str], Images, str], TestResponse]:
    """A submission of good parts except for ``overrides`` (values may be callables of the images)."""

    def send(http: FlaskClient, auth: dict[str, str], images: Images, _job: str) -> TestResponse:
        parts: dict[str, Any] = {
            "content": [images("tubingen")],
            "styles": [images("starry_night")],
        }
        headers = dict(auth)
        for key, value in overrides.items():
            value = value(images) if callable(value) else value
            if key == "headers":
                headers = {**headers, **value} if value is not None else {}
            else:
                parts[key] = value
        return multipart(http, headers, **parts)

    return send


def params(value: Any) -> Any:
    return submit_with(params=value if isinstance(value, str) else json.dumps(value))


def get(path: str) -> Callable[..., TestResponse]:
    def send(http: FlaskClient, auth: dict[str, str], _images: Images, job: str) -> TestResponse:
        return http.get(path.format(job=job), headers=auth)

    return send


def _admin_key(http: FlaskClient) -> str:
    """A new admin client in the app's database (a client row is not something a case counts)."""
    app: Any = http.application
    with app.extensions[EXTENSION_KEY].db.session() as session:
        _, key = create_client(session, f"bad-inputs-{secrets.token_hex(3)}", is_admin=True)
    return key


def admin_api(path: str) -> Callable[..., TestResponse]:
    """GET ``path`` of the admin JSON API with an admin key."""

    def send(http: FlaskClient, _auth: dict[str, str], _images: Images, job: str) -> TestResponse:
        headers = {"Authorization": f"Bearer {_admin_key(http)}"}
        return http.get(path.format(job=job), headers=headers)

    return send


def admin_page(path: str, *, method: str = "GET") -> Callable[..., TestResponse]:
    """``path`` of the /admin pages, logged in through the login form; the error comes back as
    JSON (Accept), the same error the page shows in HTML."""

    def send(http: FlaskClient, _auth: dict[str, str], _images: Images, job: str) -> TestResponse:
        token = re.compile(r'name="csrf_token" value="([^"]+)"')
        found = token.search(http.get("/admin/login").text)
        assert found
        login = {"key": _admin_key(http), "csrf_token": found.group(1)}
        assert http.post("/admin/login", data=login).status_code == 303
        found = token.search(http.get("/admin/workers").text)
        assert found
        headers = {"Accept": "application/json", "X-CSRF-Token": found.group(1)}
        return http.open(path.format(job=job), method=method, headers=headers)

    return send


def cursor_of(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


DEEP_CURSOR = cursor_of(b"[" * 1500)  # deeper than the JSON parser's recursion limit
YEAR_ONE_CURSOR = cursor_of(b'["0001-01-01T00:00:00+05:00","00000000-0000-4000-8000-000000000000"]')
HUGE = "99999999999999999999"
SUPERSCRIPT_TWO = "%C2%B2"  # a digit to str.isdigit(), not to int()
UNKNOWN_JOB = "00000000-0000-4000-8000-000000000000"

CASES = [
    Case("no auth", 401, "missing_api_key", None, submit_with(headers=None)),
    Case(
        "unknown key",
        401,
        "invalid_api_key",
        None,
        submit_with(headers={"Authorization": "Bearer sq_not-a-key"}),
    ),
    Case(
        "not a bearer key",
        401,
        "invalid_api_key",
        None,
        submit_with(headers={"Authorization": "Basic dXNlcjpwYXNz"}),
    ),
    Case("missing content", 400, "missing_content", "content", submit_with(content=None)),
    Case(
        "two contents",
        400,
        "too_many_contents",
        "content",
        submit_with(content=lambda im: [im("tubingen"), im("chelsea")]),
    ),
    Case("missing style", 400, "missing_style", "style", submit_with(styles=None)),
    Case(
        "too many styles",
        400,
        "too_many_styles",
        "style",
        submit_with(styles=lambda im: [im("starry_night")] * (MAX_STYLES + 1)),
    ),
    Case("empty content file", 400, "invalid_image", "content", submit_with(content=[b""])),
    Case(
        "content not an image",
        400,
        "invalid_image",
        "content",
        submit_with(content=[b"%PDF-1.4 this is not an image"]),
    ),
    Case(
        "truncated style image",
        400,
        "invalid_image",
        "style[0]",
        submit_with(styles=lambda im: [im("starry_night")[:300]]),
    ),
    Case(
        "image in a format whose Pillow plugin chokes",  # never run now: DDS is refused
        415,
        "unsupported_image_format",
        "content",
        submit_with(content=lambda _: [dds_with_unknown_pixel_format()]),
    ),
    Case(
        "over the pixel limit",
        400,
        "image_too_large",
        "content",
        submit_with(content=lambda _: [png_of(1001, 1000)]),
    ),
    Case(
        "decompression bomb header",
        400,
        "image_too_large",
        "style[0]",
        submit_with(styles=lambda _: [png_header_only(100_000, 100_000)]),
    ),
    Case(
        "file over the byte limit",
        413,
        "file_too_large",
        "content",
        submit_with(content=lambda _: [incompressible(MAX_UPLOAD_BYTES + 1)]),
    ),
    Case(
        "request over the body limit",
        413,
        "request_too_large",
        None,
        submit_with(content=lambda _: [incompressible(4 * 1024 * 1024)]),
    ),
    Case("params not JSON", 400, "invalid_params", "params", params("{size: 32")),
    Case("params not an object", 400, "invalid_params", "params", params("[1, 2]")),
    Case("NaN in params", 400, "invalid_params", "params", params('{"style_blend": [NaN]}')),
    Case(
        "number overflowing to infinity",
        400,
        "invalid_params",
        "params",
        params('{"style_blend": [1e400]}'),
    ),
    Case("absurdly nested params", 400, "invalid_params", "params", params("[" * 100_000)),
    Case("unknown parameter", 400, "invalid_parameter", "colour", params({"colour": "red"})),
    Case("size 0", 400, "invalid_parameter", "size", params({"size": 0})),
    Case("size too large", 400, "invalid_parameter", "size", params({"size": 100_000})),
    Case(
        "output side under 16 px",  # tubingen is 64x48: at size 16 the output is 16x12
        400,
        "invalid_parameter",
        "size",
        params({"size": 16}),
    ),
    Case(
        "negative weight",
        400,
        "invalid_parameter",
        "style_weight",
        params({"style_weight": -1}),
    ),
    Case("bad optimizer", 400, "invalid_parameter", "optimizer", params({"optimizer": "sgd"})),
    Case(
        "iterations not an integer",
        400,
        "invalid_parameter",
        "iterations",
        params({"iterations": "many"}),
    ),
    Case(
        "style_blend length mismatch",
        400,
        "invalid_parameter",
        "style_blend",
        params({"style_blend": [0.5, 0.5]}),
    ),
    Case(
        "bad Idempotency-Key",
        400,
        "invalid_idempotency_key",
        "Idempotency-Key",
        submit_with(headers={"Idempotency-Key": "k" * 201}),
    ),
    Case(
        "unknown job",
        404,
        "job_not_found",
        None,
        get("/v1/jobs/00000000-0000-4000-8000-000000000000"),
    ),
    Case("malformed job id", 404, "job_not_found", None, get("/v1/jobs/not-a-uuid")),
    Case(
        "result of an unfinished job", 409, "job_not_succeeded", None, get("/v1/jobs/{job}/result")
    ),
    Case("bad status filter", 400, "invalid_status", "status", get("/v1/jobs?status=done")),
    Case("limit 0", 400, "invalid_limit", "limit", get("/v1/jobs?limit=0")),
    Case("limit not a number", 400, "invalid_limit", "limit", get("/v1/jobs?limit=ten")),
    Case("bad cursor", 400, "invalid_cursor", "cursor", get("/v1/jobs?cursor=bm90LWEtY3Vyc29y")),
    Case(
        "wrong method",
        405,
        "method_not_allowed",
        None,
        lambda http, auth, _im, _job: http.delete("/v1/jobs", headers=auth),
    ),
    Case("unknown route", 404, "route_not_found", None, get("/v2/jobs")),
    Case(
        "cursor nested too deep",
        400,
        "invalid_cursor",
        "cursor",
        get(f"/v1/jobs?cursor={DEEP_CURSOR}"),
    ),
    Case(
        "cursor out of range in UTC",
        400,
        "invalid_cursor",
        "cursor",
        get(f"/v1/jobs?cursor={YEAR_ONE_CURSOR}"),
    ),
    # The admin JSON API.
    Case(
        "admin list: NUL in worker",
        400,
        "invalid_worker",
        "worker",
        admin_api("/v1/admin/jobs?worker=%00"),
    ),
    Case(
        "admin list: worker over-long",
        400,
        "invalid_worker",
        "worker",
        admin_api("/v1/admin/jobs?worker=" + "w" * 256),
    ),
    Case(
        "admin list: client id out of range",
        400,
        "invalid_client_id",
        "client_id",
        admin_api(f"/v1/admin/jobs?client_id={HUGE}"),
    ),
    Case(
        "admin list: cursor nested too deep",
        400,
        "invalid_cursor",
        "cursor",
        admin_api(f"/v1/admin/jobs?cursor={DEEP_CURSOR}"),
    ),
    Case(
        "admin list: cursor out of range in UTC",
        400,
        "invalid_cursor",
        "cursor",
        admin_api(f"/v1/admin/jobs?cursor={YEAR_ONE_CURSOR}"),
    ),
    Case(
        "admin stats: hours with an underscore",
        400,
        "invalid_hours",
        "hours",
        admin_api("/v1/admin/stats?hours=1_0"),
    ),
    # The /admin pages (logged in).
    Case("page: NUL in worker", 400, "invalid_worker", "worker", admin_page("/admin?worker=%00")),
    Case(
        "page: worker over-long",
        400,
        "invalid_worker",
        "worker",
        admin_page("/admin?worker=" + "w" * 256),
    ),
    Case(
        "page: client id out of range",
        400,
        "invalid_client_id",
        "client",
        admin_page(f"/admin?client={HUGE}"),
    ),
    Case(
        "page: client id in superscript digits",
        400,
        "invalid_client_id",
        "client",
        admin_page(f"/admin?client={SUPERSCRIPT_TWO}"),
    ),
    Case("page: unknown status", 400, "invalid_status", "status", admin_page("/admin?status=done")),
    Case("page: limit 0", 400, "invalid_limit", "limit", admin_page("/admin?limit=0")),
    Case(
        "page: cursor nested too deep",
        400,
        "invalid_cursor",
        "cursor",
        admin_page(f"/admin?cursor={DEEP_CURSOR}"),
    ),
    Case(
        "page: cursor out of range in UTC",
        400,
        "invalid_cursor",
        "cursor",
        admin_page(f"/admin?cursor={YEAR_ONE_CURSOR}"),
    ),
    Case(
        "page: time without a zone",
        400,
        "invalid_time",
        "created_from",
        admin_page("/admin?created_from=2026-01-01T00:00:00"),
    ),
    Case(
        "page: hours in superscript digits",
        400,
        "invalid_hours",
        "hours",
        admin_page(f"/admin/stats?hours={SUPERSCRIPT_TWO}"),
    ),
    Case(
        "page: hours out of range",
        400,
        "invalid_hours",
        "hours",
        admin_page(f"/admin/stats?hours={HUGE}"),
    ),
    Case("page: malformed job id", 404, "job_not_found", None, admin_page("/admin/jobs/%00")),
    Case(
        "page: thumbnail size in superscript digits",
        400,
        "invalid_input",
        "size",
        admin_page(f"/admin/jobs/{{job}}/thumbs/content?size={SUPERSCRIPT_TWO}"),
    ),
    Case(
        "page: style image number in superscript digits",
        404,
        "image_not_found",
        None,
        admin_page(f"/admin/jobs/{{job}}/thumbs/style-{SUPERSCRIPT_TWO}"),
    ),
    Case(
        "page: live with a bad job id",
        400,
        "invalid_input",
        "id",
        admin_page("/admin/live?id=%00"),
    ),
    Case(
        "page: cancel of an unknown job",
        404,
        "job_not_found",
        None,
        admin_page(f"/admin/jobs/{UNKNOWN_JOB}/cancel", method="POST"),
    ),
    Case(
        "page: delete files with a malformed job id",
        404,
        "job_not_found",
        None,
        admin_page("/admin/jobs/%00/delete-files", method="POST"),
    ),
    Case("page: unknown page", 404, "page_not_found", None, admin_page("/admin/nothing")),
]


@pytest.fixture
def existing_job(submit: Any) -> str:
    """A queued job of the caller (for the cases that need one), made before counting; not
    identical to the good submit (which would share its run and send no message)."""
    response = submit(params={**TINY_PARAMS, "seed": 7})
    assert response.status_code == 202
    job_id: str = response.json["id"]
    return job_id


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_a_json_4xx_and_changes_nothing(
    case: Case,
    http: FlaskClient,
    auth: dict[str, str],
    image_bytes: Images,
    existing_job: str,
    counts: Callable[[], tuple[int, int, int, int]],
) -> None:
    before = counts()
    response = case.send(http, auth, image_bytes, existing_job)
    assert response.status_code == case.status, response.get_data(as_text=True)[:500]
    assert response.mimetype == "application/json"
    error = response.json["error"]
    assert error["code"] == case.code
    assert error["message"]
    if case.field is not None:
        assert error["details"]["field"] == case.field
        assert case.field in error["message"], "the message names what to fix"
    assert counts() == before, "a rejected request must leave no row, no file and no message"


# The requests the cases start from, with good values: each is accepted, so a case's 4xx
# comes from the one thing it changes, and the counts above see what an accepted one adds.
GOOD = [
    Case("submit", 202, "", None, submit_with()),
    Case("read a job", 200, "", None, get("/v1/jobs/{job}")),
    Case("list jobs", 200, "", None, get("/v1/jobs?status=queued&limit=5")),
    Case(
        "admin list",
        200,
        "",
        None,
        admin_api("/v1/admin/jobs?worker=w&client_id=1&status=queued&limit=5"),
    ),
    Case("admin stats", 200, "", None, admin_api("/v1/admin/stats?hours=10")),
    Case(
        "page",
        200,
        "",
        None,
        admin_page("/admin?worker=w&client=1&status=queued&limit=5&created_from=2026-01-01T00:00Z"),
    ),
    Case("stats page", 200, "", None, admin_page("/admin/stats?hours=2")),
]
WRITES = {"submit": (1, 1, 1, 1)}  # its row, its created event, its files, its message


@pytest.mark.parametrize("case", GOOD, ids=[c.name for c in GOOD])
def test_the_same_requests_with_good_values_are_accepted(
    case: Case,
    http: FlaskClient,
    auth: dict[str, str],
    image_bytes: Images,
    existing_job: str,
    counts: Callable[[], tuple[int, int, int, int]],
) -> None:
    before = counts()
    response = case.send(http, auth, image_bytes, existing_job)
    assert response.status_code == case.status, response.get_data(as_text=True)[:500]
    added = tuple(now - then for now, then in zip(counts(), before, strict=True))
    assert added == WRITES.get(case.name, (0, 0, 0, 0))
