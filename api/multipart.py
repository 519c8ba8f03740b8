"""The submit's multipart/form-data body, split without werkzeug's parser when it is plain.

werkzeug's streaming parser is pure Python and compiles two regular
expressions for every new boundary (every request: clients pick a random
one): together about a sixth of a submit's Python time. A submit body is in
memory anyway (it is at most ``MAX_CONTENT_LENGTH``), so a well-formed one is
split here with ``bytes.find``. Anything unusual (a line break other than
CRLF, folded or extra part headers, a text part in another charset, too many
parts, a text field over the form limit, a truncated body) is left to
werkzeug, so that such requests get exactly the answers they always got.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flask import Request
from werkzeug.http import parse_options_header

CRLF = b"\r\n"
HEADERS_END = b"\r\n\r\n"
MULTIPART = "multipart/form-data"
DEFAULT_MAX_FORM_PARTS = 1000  # werkzeug's default for Request.max_form_parts


@dataclass
class Form:
    """A form's parts by name: files (parts with a filename) and text fields."""

    files: dict[str, list[bytes]] = field(default_factory=dict)
    fields: dict[str, list[str]] = field(default_factory=dict)


def read_form(request: Request) -> Form:
    """The request's form, parsed here when plain, by werkzeug otherwise."""
    mimetype, options = parse_options_header(request.headers.get("Content-Type", ""))
    boundary = options.get("boundary", "")
    if mimetype == MULTIPART and boundary and boundary.isascii():
        # get_data enforces MAX_CONTENT_LENGTH (413) and caches the body, so
        # werkzeug can still parse it below.
        body = request.get_data(cache=True)
        max_field_bytes = request.max_form_memory_size
        max_parts = request.max_form_parts or DEFAULT_MAX_FORM_PARTS
        form = split_multipart(body, boundary.encode("latin-1"), max_field_bytes, max_parts)
        if form is not None:
            return form
    files = {name: [f.read() for f in request.files.getlist(name)] for name in request.files}
    fields = {name: request.form.getlist(name) for name in request.form}
    return Form(files, fields)


def split_multipart(
    body: bytes, boundary: bytes, max_field_bytes: int | None, max_parts: int
) -> Form | None:
    """The parts of a plain multipart body (RFC 7578 with CRLF line breaks), or None."""
    delimiter = b"--" + boundary
    if not body.startswith(delimiter):
        return None  # a preamble: rare, werkzeug's business
    form = Form()
    position = len(delimiter)
    parts = 0
    while True:
        if body.startswith(b"--", position):  # the close delimiter
            return form if body[position + 2 :].strip(b" \t\r\n") == b"" else None
        if not body.startswith(CRLF, position):
            return None
        headers_end = body.find(HEADERS_END, position)
        if headers_end < 0:
            return None
        data_end = body.find(CRLF + delimiter, headers_end + 4)
        if data_end < 0:
            return None
        parts += 1
        if parts > max_parts:
            return None
        disposition = _content_disposition(body[position + 2 : headers_end])
        if disposition is None:
            return None
        name, filename, is_text_ok = disposition
        data = body[headers_end + 4 : data_end]
        if filename is not None:
            form.files.setdefault(name, []).append(data)
        else:
            if not is_text_ok or (max_field_bytes is not None and len(data) > max_field_bytes):
                return None
            form.fields.setdefault(name, []).append(data.decode("utf-8", "replace"))
        position = data_end + 2 + len(delimiter)


def _content_disposition(raw: bytes) -> tuple[str, str | None, bool] | None:
    """(name, filename or None, whether a text part is UTF-8) from a part's headers, or None."""
    name: str | None = None
    filename: str | None = None
    is_utf8 = True
    for line in raw.split(CRLF):
        if line[:1] in (b" ", b"\t"):
            return None  # a folded header line
        try:
            header, _, value = line.decode("utf-8").partition(":")
        except UnicodeDecodeError:
            return None
        header = header.strip().lower()
        if header == "content-disposition":
            kind, options = parse_options_header(value.strip())
            if kind != "form-data" or "name" not in options:
                return None
            name, filename = options["name"], options.get("filename")
        elif header == "content-type":
            _, options = parse_options_header(value.strip())
            is_utf8 = options.get("charset", "utf-8").lower() in ("utf-8", "utf8")
        elif header != "content-transfer-encoding":
            return None
    if name is None:
        return None
    return name, filename, is_utf8
