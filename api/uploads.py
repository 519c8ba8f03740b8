"""Reading and validating the parts of a job submission, before anything is stored."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Response, send_file

from api.multipart import Form
from shared.errors import (
    ClientError,
    IdempotencyKeyReusedError,
    InvalidInputError,
    PayloadTooLargeError,
)
from shared.images import ImageInfo, input_mimetype, inspect_image
from shared.input_warnings import input_warnings
from shared.memory_estimate import estimate_peak_bytes
from shared.models import Job
from shared.params import MAX_STYLES, StyleParams, check_style_blend, parse_params
from shared.sizes import batch_shape, check_output_size

IDEMPOTENCY_KEY_MAX_LENGTH = 200
PARAMS_FILE_MAX_BYTES = 64 * 1024  # a params part sent as a file (a few hundred bytes in use)


@dataclass(frozen=True)
class Submission:
    """A validated job submission: inputs that decode, parameters in range, and what the
    inputs may do badly (``shared.input_warnings``, as dicts; not part of the digest)."""

    params: StyleParams
    content: bytes
    styles: list[bytes]
    warnings: list[dict[str, str]]
    # Its estimated peak memory on a GPU, bytes (shared.memory_estimate); None: not estimated.
    memory_estimate: int | None = None
    # Its output's "WxH" (shared.sizes.batch_shape): the jobs a worker may run with it.
    batch_shape: str | None = None

    @property
    def digest(self) -> str:
        """What an Idempotency-Key replay must match (the row's ``request_digest``)."""
        return request_digest(self.params, self.content, self.styles)


def request_digest(params: StyleParams, content: bytes, styles: Sequence[bytes]) -> str:
    """sha256 over the parameters with every default filled in, then each file's bytes.

    Two requests that would make the same job have the same digest, whatever
    order their params JSON had and whichever defaults it spelt out. Each file
    is preceded by its length, so that no two lists of files hash alike.
    """
    digest = hashlib.sha256(b"stylequeue request 1\n")
    digest.update(json.dumps(params.model_dump(mode="json"), sort_keys=True).encode())
    for data in (content, *styles):
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


def replay_digest(form: Form) -> str | None:
    """The digest of a request sent again with a used key (None: it is no valid request).

    Nothing is decoded: the first request with the key was checked in full.
    """
    contents = form.files.get("content", [])
    styles = form.files.get("style", [])
    if len(contents) != 1 or not styles:
        return None
    try:
        params = parse_params(_params_object(_params_texts(form)))
    except ClientError:
        return None
    return request_digest(params, contents[0], styles)


def check_same_request(job: Job, key: str, digest: str | None) -> None:
    """Raise a 422 if ``job``, made with Idempotency-Key ``key``, came from another request.

    Jobs stored before digests were kept (``request_digest`` empty) replay as before.
    """
    if job.request_digest is None or job.request_digest == digest:
        return
    raise IdempotencyKeyReusedError(
        f"Idempotency-Key {key!r}: already used for job {job.id}, made from other images"
        " or parameters; send a new key for a new job (the same request again gets that"
        " job back)",
        details={"field": "Idempotency-Key", "idempotency_key": key, "job_id": str(job.id)},
    )


def read_submission(form: Form, *, max_upload_bytes: int, max_image_pixels: int) -> Submission:
    """Validate every part or raise the first problem as a 4xx naming the field."""
    contents = form.files.get("content", [])
    styles = form.files.get("style", [])
    for name in ("content", "style"):
        if name in form.fields:
            raise InvalidInputError(
                f"{name}: sent as a text field; send the image as a file (a part with a filename)",
                field=name,
                code="image_not_a_file",
            )
    if not contents:
        raise InvalidInputError(
            "content: a content image is required", field="content", code="missing_content"
        )
    if len(contents) > 1:
        raise InvalidInputError(
            "content: send exactly one content image", field="content", code="too_many_contents"
        )
    if not styles:
        raise InvalidInputError(
            "style: at least one style image is required", field="style", code="missing_style"
        )
    if len(styles) > MAX_STYLES:
        raise InvalidInputError(
            f"style: at most {MAX_STYLES} style images are allowed, got {len(styles)}",
            field="style",
            code="too_many_styles",
            details={"max_styles": MAX_STYLES},
        )
    params = parse_params(_params_object(_params_texts(form)))
    check_style_blend(params, len(styles))
    content_info = _check_image(contents[0], "content", max_upload_bytes, max_image_pixels)
    check_output_size(content_info.width, content_info.height, params.size)
    style_infos = [
        _check_image(style, f"style[{i}]", max_upload_bytes, max_image_pixels)
        for i, style in enumerate(styles)
    ]
    warnings = [w.to_dict() for w in input_warnings(content_info, style_infos, params)]
    estimate = estimate_peak_bytes(params, (content_info.height, content_info.width), len(styles))
    return Submission(
        params=params,
        content=contents[0],
        styles=styles,
        warnings=warnings,
        memory_estimate=estimate,
        batch_shape=batch_shape(content_info.width, content_info.height, params.size),
    )


def read_cache_field(form: Form) -> bool:
    """The form field ``cache``: ``true`` (also when absent) lets an exact repeat of an
    earlier succeeded job be served from its result; ``false`` has the job computed."""
    if "cache" in form.files:
        raise InvalidInputError(
            "cache: sent as a file; send true or false as a text field",
            field="cache",
            code="invalid_cache",
        )
    values = form.fields.get("cache", [])
    if not values:
        return True
    if len(values) > 1:
        raise InvalidInputError("cache: send one cache field", field="cache", code="invalid_cache")
    word = values[0].strip().lower()
    if word not in ("true", "false"):
        raise InvalidInputError(
            f"cache: must be true or false, got {values[0][:40]!r}",
            field="cache",
            code="invalid_cache",
        )
    return word == "true"


MIN_PRIORITY, MAX_PRIORITY = -10, 10


def read_priority_field(form: Form) -> int:
    """The form field ``priority``: an integer from -10 to 10 (0 when absent) that orders
    the client's own queued jobs, higher first (``shared.fair_share``)."""
    bad = f"priority: must be an integer from {MIN_PRIORITY} to {MAX_PRIORITY}"
    details = {"min": MIN_PRIORITY, "max": MAX_PRIORITY}
    if "priority" in form.files:
        raise InvalidInputError(
            f"{bad}, sent as a text field (not a file)",
            field="priority",
            code="invalid_priority",
            details=details,
        )
    values = form.fields.get("priority", [])
    if not values:
        return 0
    if len(values) > 1:
        raise InvalidInputError(
            "priority: send one priority field",
            field="priority",
            code="invalid_priority",
            details=details,
        )
    text = values[0].strip()
    try:
        priority = int(text, 10)
    except ValueError:
        priority = None
    if priority is None or not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise InvalidInputError(
            f"{bad}, got {values[0][:40]!r}",
            field="priority",
            code="invalid_priority",
            details=details,
        )
    return priority


def _params_texts(form: Form) -> list[str]:
    """The ``params`` parts' text: a text field, or a file part (``curl -F params=@p.json``)."""
    texts = list(form.fields.get("params", []))
    for data in form.files.get("params", []):
        if len(data) > PARAMS_FILE_MAX_BYTES:
            raise PayloadTooLargeError(
                f"params: the file is over the limit of {PARAMS_FILE_MAX_BYTES} bytes",
                code="params_too_large",
                details={"field": "params", "max_bytes": PARAMS_FILE_MAX_BYTES},
            )
        try:
            texts.append(data.decode("utf-8-sig"))
        except UnicodeDecodeError:
            raise InvalidInputError(
                "params: the file is not UTF-8 text (send the parameters as a JSON object)",
                field="params",
                code="invalid_params",
            ) from None
    return texts


def _params_object(raw_values: list[str]) -> dict[str, Any]:
    if not raw_values:
        return {}
    if len(raw_values) > 1:
        raise InvalidInputError(
            "params: send one params field", field="params", code="invalid_params"
        )
    raw = raw_values[0]
    if raw.strip() == "":
        return {}
    try:
        value = json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise InvalidInputError(
            f"params: not valid JSON ({exc.msg} at position {exc.pos})"
            if isinstance(exc, json.JSONDecodeError)
            else f"params: not valid JSON ({exc})",
            field="params",
            code="invalid_params",
        ) from None
    if not isinstance(value, dict):
        raise InvalidInputError(
            f"params: must be a JSON object, got {type(value).__name__}",
            field="params",
            code="invalid_params",
        )
    return value


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON does not, and no parameter can use them.
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range for a number")
    return value


def _check_image(data: bytes, field: str, max_bytes: int, max_pixels: int) -> ImageInfo:
    """What the image's header says (size, alpha), once it has been checked; the first
    problem as a 4xx."""
    if len(data) > max_bytes:
        raise PayloadTooLargeError(
            f"{field}: the file is over the limit of {max_bytes} bytes",
            code="file_too_large",
            details={"field": field, "max_bytes": max_bytes},
        )
    # A check whose cost follows the file's bytes, not its pixels: the worker decodes
    # every pixel, the API only makes sure that there is an image of an accepted format.
    return inspect_image(data, field=field, max_pixels=max_pixels)


def read_idempotency_key(raw: str | None) -> str | None:
    """The Idempotency-Key header: 1..200 visible ASCII characters, or absent."""
    if raw is None:
        return None
    key = raw.strip()
    if (
        not key
        or len(key) > IDEMPOTENCY_KEY_MAX_LENGTH
        or not key.isascii()
        or not key.isprintable()
    ):
        raise InvalidInputError(
            f"Idempotency-Key: must be 1 to {IDEMPOTENCY_KEY_MAX_LENGTH} printable ASCII characters",
            field="Idempotency-Key",
            code="invalid_idempotency_key",
        )
    return key


# An input goes back (to admins only) as the bytes its client sent: a polyglot (a PNG
# that is also a ZIP, say) must stay an image. Its own type, read from its first
# bytes, and never sniffed by the browser (every response also says nosniff).
INPUT_HEADERS = {"X-Content-Type-Options": "nosniff"}


def serve_input_bytes(data: bytes) -> Response:
    """A stored input read from an object store, as ``serve_input`` serves a file."""
    response = Response(data, mimetype=input_mimetype(data[:16]))
    response.headers["Cache-Control"] = "no-cache"
    response.headers.update(INPUT_HEADERS)
    return response


def serve_input(path: Path) -> Response:
    """A stored input file as a response: its true image type, never sniffed."""
    with path.open("rb") as file:
        head = file.read(16)
    response = send_file(path, mimetype=input_mimetype(head), max_age=0)
    response.headers.update(INPUT_HEADERS)
    return response
