"""Uploads: only JPEG, PNG and WebP, plain error messages, a check that costs what the file
weighs, and inputs served back safely.

The format and message cases go through the app in process (every byte the
real API would run); what an image costs an API process is measured on the real
one (``stylequeue api``, gunicorn), and what a worker decodes on a real worker.
"""

from __future__ import annotations

import io
import re
import struct
import time
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_process import ApiProcess
from flask import Flask
from PIL import Image
from processes import free_port

from api.services import EXTENSION_KEY
from shared import submissions
from shared.auth import authenticate, create_client
from shared.celery_app import enqueue_job
from shared.errors import UnsupportedImageFormatError
from shared.images import decode_image, inspect_image
from shared.params import parse_params

Submit = Callable[..., Any]
ACCEPTED = "JPEG, PNG or WebP"
# A Python exception's name in a message: what a client must never have to read.
EXCEPTION_NAME = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception)\b")


def encoded(fmt: str, size: tuple[int, int] = (48, 36), **options: Any) -> bytes:
    image = Image.new("RGB", size, (200, 120, 40))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def gif_of_many_frames(frames: int = 50) -> bytes:
    images = [Image.new("P", (16, 16), i % 256) for i in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:])
    return buffer.getvalue()


REFUSED = {
    "GIF": gif_of_many_frames,
    "TIFF": lambda: encoded("TIFF"),
    "BMP": lambda: encoded("BMP"),
    "ICO": lambda: encoded("ICO"),
    "PCX": lambda: encoded("PCX"),
    "PPM": lambda: encoded("PPM"),
    "TGA": lambda: encoded("TGA"),
    "SGI": lambda: encoded("SGI"),
    "QOI": lambda: encoded("QOI"),
}


# ---------------------------------------------------------------- formats


@pytest.mark.parametrize("fmt", sorted(REFUSED))
def test_an_image_in_another_format_is_a_415_naming_it_and_the_accepted_ones(
    fmt: str, submit: Submit, image_bytes: Callable[[str], bytes], counts: Callable[[], Any]
) -> None:
    before = counts()
    response = submit(styles=[image_bytes("starry_night"), REFUSED[fmt]()])
    assert response.status_code == 415, response.get_data(as_text=True)
    error = response.json["error"]
    assert error["code"] == "unsupported_image_format"
    assert error["message"] == f"style[1]: {fmt} images are not accepted; send {ACCEPTED}"
    assert error["details"] == {
        "field": "style[1]",
        "format": fmt,
        "accepted": ["JPEG", "PNG", "WebP"],
    }
    assert counts() == before


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_jpeg_png_and_webp_are_accepted(fmt: str, submit: Submit) -> None:
    response = submit(content=encoded(fmt), styles=[encoded(fmt, (40, 40))])
    assert response.status_code == 202, response.get_data(as_text=True)


def test_no_other_pillow_plugin_runs_on_an_upload(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused format's plugin is never asked, not even to read the header."""
    from PIL import GifImagePlugin

    def tripwire(*_args: Any) -> None:
        raise AssertionError("the GIF plugin ran on an upload")

    monkeypatch.setattr(GifImagePlugin.GifImageFile, "_open", tripwire)
    for check in (inspect_image, decode_image):
        with pytest.raises(UnsupportedImageFormatError):
            check(gif_of_many_frames(), field="content")


def test_a_worker_decodes_only_the_accepted_formats() -> None:
    with pytest.raises(UnsupportedImageFormatError) as refused:
        decode_image(encoded("TIFF"), field="style[0]")
    assert refused.value.message == f"style[0]: TIFF images are not accepted; send {ACCEPTED}"
    for fmt in ("JPEG", "PNG", "WEBP"):
        assert decode_image(encoded(fmt), field="content").size == (48, 36)


# ---------------------------------------------------------------- messages


def png_with_bad_crc() -> bytes:
    data = bytearray(encoded("PNG"))
    data[29] ^= 0xFF  # the IHDR chunk's checksum
    return bytes(data)


BAD_FILES: dict[str, tuple[Callable[[], bytes], str]] = {
    "not an image": (
        lambda: b"%PDF-1.4 a document",
        f"content: not an image, or a format other than {ACCEPTED}",
    ),
    "text": (
        lambda: b"hello, this is some text and not a picture " * 20,
        f"content: not an image, or a format other than {ACCEPTED}",
    ),
    "cut-short PNG": (
        lambda: encoded("PNG", (64, 64))[:70],
        "content: the PNG file is damaged or cut short (it does not decode)",
    ),
    "PNG with a broken checksum": (
        png_with_bad_crc,
        "content: the PNG file is damaged or cut short (it does not decode)",
    ),
    "cut-short JPEG": (
        lambda: encoded("JPEG", (256, 256))[:400],
        "content: the JPEG file is damaged or cut short (it does not decode)",
    ),
    "cut-short WebP": (
        lambda: encoded("WEBP", (64, 64))[:40],
        "content: the WebP file is damaged or cut short (it does not decode)",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_image_is_a_plain_message_naming_the_field(
    case: str, submit: Submit, counts: Callable[[], Any]
) -> None:
    make, message = BAD_FILES[case]
    before = counts()
    response = submit(content=make())
    assert response.status_code == 400, response.get_data(as_text=True)
    error = response.json["error"]
    assert error["code"] == "invalid_image"
    assert error["message"] == message
    assert not EXCEPTION_NAME.search(error["message"]), error["message"]
    assert error["details"]["field"] == "content"
    assert counts() == before


# ---------------------------------------------------------------- decode cost


def bomb_png(side: int = 6324) -> bytes:
    """6324x6324, 16-bit RGBA, all zero: 311 KB that a full decode makes 320 MB of."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + side * 8)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 16, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_the_api_checks_a_png_bomb_without_decoding_it() -> None:
    bomb = bomb_png()
    assert len(bomb) < 400_000
    started = time.perf_counter()
    info = inspect_image(bomb, field="content")
    assert (info.format, info.width, info.height) == ("PNG", 6324, 6324)
    assert time.perf_counter() - started < 1.0  # a full decode: 2.5 s and 800 MB


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()]


@pytest.fixture
def real_api(
    tmp_path: Path, postgresql_url: str, redis_url: str, redis_prefix: str
) -> Iterator[tuple[ApiProcess, str]]:
    """``stylequeue api`` with the default upload limits (20 MB a file, 40 M pixels)."""
    env = {
        "STYLEQUEUE_DATABASE_URL": postgresql_url,
        "STYLEQUEUE_REDIS_URL": redis_url,
        "STYLEQUEUE_REDIS_PREFIX": f"{redis_prefix}uploads:",
        "STYLEQUEUE_DATA_DIR": str(tmp_path / "data"),
    }
    from shared.db import Database

    db = Database(postgresql_url)
    with db.session() as session:
        _, key = create_client(session, f"uploads-{uuid.uuid4().hex[:6]}")
    db.dispose()
    process = ApiProcess(env, free_port(), tmp_path / "api.log")
    process.start()
    try:
        process.wait_ready()
        yield process, key
    finally:
        process.stop()


@pytest.mark.slow
def test_nine_png_bombs_in_one_submit_cost_the_api_process_almost_nothing(
    real_api: tuple[ApiProcess, str],
) -> None:
    api, key = real_api
    assert api.process is not None
    bomb = bomb_png()
    # Every gunicorn worker has booted and served once (so its peak so far is its baseline).
    deadline = time.monotonic() + 30
    while len(_children(api.process.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    with httpx.Client(base_url=api.base_url, timeout=60.0) as http:
        for _ in range(8):
            http.get("/healthz")
        workers = _children(api.process.pid)
        before = {pid: _peak_rss_mb(pid) for pid in workers}
        started = time.monotonic()
        response = http.post(
            "/v1/jobs",
            headers={"Authorization": f"Bearer {key}"},
            files=[("content", ("bomb.png", bomb))] + [("style", ("bomb.png", bomb))] * 8,
            data={"params": '{"size": 64, "iterations": 1, "scales": 1}'},
        )
        seconds = time.monotonic() - started
    assert response.status_code == 202, response.text[:500]
    grew = max(_peak_rss_mb(pid) - before[pid] for pid in workers)
    print(f"nine bombs: {seconds:.2f} s, an API worker's peak memory +{grew:.0f} MB")
    # Before: each image decoded in full, 2.45 s and +785 MB (91 MB to 876 MB) for one.
    assert grew < 150, f"an API worker's peak memory grew by {grew:.0f} MB"
    assert seconds < 10, f"the submit took {seconds:.1f} s"


# ---------------------------------------------------------------- serving inputs back


def png_zip_polyglot() -> bytes:
    """A valid PNG with a ZIP archive after its IEND: both a PNG and a ZIP."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("index.html", "<script>alert(1)</script>")
    return encoded("PNG", (64, 48)) + archive.getvalue()


def test_an_input_is_served_to_admins_as_its_own_type_never_sniffed(
    app: Flask, submit: Submit, make_api_key: Callable[..., str]
) -> None:
    polyglot = png_zip_polyglot()
    assert zipfile.is_zipfile(io.BytesIO(polyglot))
    jpeg = encoded("JPEG", (40, 40))
    response = submit(content=polyglot, styles=[jpeg])
    assert response.status_code == 202
    job_id = response.json["id"]
    admin = app.test_client()
    login = admin.get("/admin/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', login.text)
    assert csrf is not None
    key = make_api_key("admin", is_admin=True)
    logged_in = admin.post("/admin/login", data={"key": key, "csrf_token": csrf.group(1)})
    assert logged_in.status_code == 303, logged_in.text[:300]
    for name, mimetype in (("content", "image/png"), ("style-0", "image/jpeg")):
        served = admin.get(f"/admin/jobs/{job_id}/files/{name}")
        assert served.status_code == 200, served.get_data(as_text=True)[:300]
        assert served.mimetype == mimetype
        assert served.headers["X-Content-Type-Options"] == "nosniff"


# ---------------------------------------------------------------- what a worker decodes


@pytest.mark.slow
def test_a_stored_gif_fails_its_job_on_the_worker_without_being_decoded(
    worker_stack: Any,
) -> None:
    # Stored behind the API's back (a job from before formats were checked): the
    # worker's decode refuses it with the same code and message.
    services = worker_stack.app.extensions[EXTENSION_KEY]
    http = worker_stack.app.test_client()
    with services.db.session() as session:
        _, key = create_client(session, "formats")
        client_id = authenticate(session, key).client_id
        job, _ = submissions.create_job(
            session,
            services.storage,
            client_id=client_id,
            params=parse_params({"size": 32, "iterations": 2, "scales": 1}),
            content=gif_of_many_frames(1000),
            styles=[encoded("PNG")],
            idempotency_key=None,
            enqueue=lambda job_id: enqueue_job(services.celery, job_id),
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        body = http.get(f"/v1/jobs/{job.id}", headers={"Authorization": f"Bearer {key}"}).json
        if body["status"] not in ("queued", "running"):
            break
        time.sleep(0.1)
    assert body["status"] == "failed", body
    assert body["error"]["code"] == "unsupported_image_format"
    assert body["error"]["message"] == f"content: GIF images are not accepted; send {ACCEPTED}"
