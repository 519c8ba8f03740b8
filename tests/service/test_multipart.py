"""The submit's own multipart splitter agrees with werkzeug's parser, or steps aside."""

from __future__ import annotations

import io

import httpx
import pytest
from flask import Flask, Request
from werkzeug.test import EnvironBuilder

from api.multipart import DEFAULT_MAX_FORM_PARTS, Form, read_form, split_multipart

BOUNDARY = "sq-test-boundary-1234"
PNGISH = bytes(range(256)) * 4 + b"\r\n--sq-test-boundary-12"  # binary, with a near-delimiter


def by_werkzeug(body: bytes, boundary: str = BOUNDARY) -> Form:
    environ = EnvironBuilder(
        method="POST",
        input_stream=io.BytesIO(body),
        content_type=f"multipart/form-data; boundary={boundary}",
        content_length=len(body),
    ).get_environ()
    request = Request(environ)
    files = {name: [f.read() for f in request.files.getlist(name)] for name in request.files}
    return Form(files, {name: request.form.getlist(name) for name in request.form})


def split(body: bytes, boundary: str = BOUNDARY) -> Form | None:
    return split_multipart(body, boundary.encode(), 500_000, DEFAULT_MAX_FORM_PARTS)


def httpx_body() -> tuple[bytes, str]:
    request = httpx.Request(
        "POST",
        "http://x/v1/jobs",
        files=[
            ("content", ("c.png", PNGISH)),
            ("style", ("s.png", b"S1")),
            ("style", ("t.png", b"")),
        ],
        data={"params": '{"size": 64, "note": "é"}'},
    )
    body = request.read()
    boundary = request.headers["content-type"].split("boundary=")[1]
    return body, boundary


def test_httpx_body_is_split_here_like_werkzeug() -> None:
    body, boundary = httpx_body()
    mine = split(body, boundary)
    assert mine is not None  # the fast path is taken for a real client's body
    assert mine == by_werkzeug(body, boundary)
    assert mine.files["style"] == [b"S1", b""]
    assert mine.files["content"] == [PNGISH]
    assert mine.fields == {"params": ['{"size": 64, "note": "é"}']}


def part(headers: str, data: bytes, eol: bytes = b"\r\n") -> bytes:
    return headers.replace("\n", eol.decode()).encode() + eol + eol + data


def body_of(
    *parts: bytes, eol: bytes = b"\r\n", preamble: bytes = b"", epilogue: bytes = b""
) -> bytes:
    delimiter = b"--" + BOUNDARY.encode()
    out = preamble + delimiter
    for p in parts:
        out += eol + p + eol + delimiter
    return out + b"--" + eol + epilogue


FILE = 'Content-Disposition: form-data; name="content"; filename="c.png"\nContent-Type: image/png'
FIELD = 'Content-Disposition: form-data; name="params"'


@pytest.mark.parametrize(
    "body",
    [
        body_of(part(FILE, PNGISH), part(FIELD, b"{}")),
        body_of(part(FILE, PNGISH, b"\n"), part(FIELD, b"{}", b"\n"), eol=b"\n"),
        body_of(part(FILE, b"x"), preamble=b"ignored preamble\r\n"),
        body_of(part(FILE, b"x"), epilogue=b"an epilogue"),
        body_of(part(FIELD + "\n  ; folded", b"{}")),
        body_of(
            part(FIELD + "\nContent-Type: text/plain; charset=iso-8859-1", "é".encode("latin-1"))
        ),
        body_of(part(FIELD + "\nX-Other: 1", b"{}")),
        body_of(part("Content-Disposition: form-data", b"no name")),
        body_of(part(FILE.replace("c.png", ""), b"empty filename is still a file")),
        body_of(part("Content-Disposition: form-data; name*=UTF-8''caf%C3%A9", b"v")),
        body_of(part(FILE, b"x"))[:-10],  # truncated
        body_of(),
    ],
    ids=[
        "plain",
        "lf-only",
        "preamble",
        "epilogue",
        "folded",
        "latin-1",
        "other-header",
        "no-name",
        "empty-filename",
        "rfc2231-name",
        "truncated",
        "no-parts",
    ],  # fmt: skip
)
def test_split_here_equals_werkzeug_or_steps_aside(body: bytes) -> None:
    mine = split(body)
    if mine is not None:
        assert mine == by_werkzeug(body)


def test_plain_bodies_take_the_fast_path() -> None:
    assert split(body_of(part(FILE, PNGISH), part(FIELD, b"{}"))) is not None
    assert split(body_of(part(FILE, PNGISH, b"\n"), eol=b"\n")) is None  # werkzeug's, then


def test_limits_are_left_to_werkzeug() -> None:
    big = body_of(part(FIELD, b"x" * 101))
    assert split_multipart(big, BOUNDARY.encode(), 100, DEFAULT_MAX_FORM_PARTS) is None
    many = body_of(*[part(FIELD, b"{}")] * 3)
    assert split_multipart(many, BOUNDARY.encode(), None, 2) is None


def test_read_form_falls_back_to_werkzeug_for_an_lf_only_body() -> None:
    body = body_of(part(FILE, b"img", b"\n"), part(FIELD, b"{}", b"\n"), eol=b"\n")
    app = Flask(__name__)
    with app.test_request_context(
        "/", method="POST", data=body, content_type=f"multipart/form-data; boundary={BOUNDARY}"
    ):
        from flask import request

        assert read_form(request) == Form({"content": [b"img"]}, {"params": ["{}"]})
