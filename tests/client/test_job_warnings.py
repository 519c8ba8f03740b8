"""Input warnings from the submit to every place a user looks, through a real API process.

A real ``stylequeue api`` (gunicorn, ``api_server``) on the test database, on
PostgreSQL and on SQLite; the requests go over HTTP from this process, the
commands run as programs. No worker listens in the API tests' key space, so the
jobs stay queued: the warnings are the submit's, not a worker's.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from markupsafe import escape
from PIL import Image

StylequeueCli = Callable[..., subprocess.CompletedProcess[str]]
TIMEOUT_S = 30.0
# At size 128 a 64 px square content and style are used at twice their size: no warning.
ORDINARY = {"size": 128, "iterations": 2, "scales": 1}
CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


def _png(width: int, height: int, mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    colour = (90, 140, 200, 128) if mode == "RGBA" else (90, 140, 200)
    Image.new(mode, (width, height), colour).save(out, format="PNG")
    return out.getvalue()


def _submit(
    api_server: str,
    key: str,
    content: bytes,
    styles: list[bytes],
    params: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    files = [("content", ("content.png", content, "image/png"))]
    files += [("style", (f"style{i}.png", s, "image/png")) for i, s in enumerate(styles)]
    return httpx.post(
        f"{api_server}/v1/jobs",
        files=files,
        data={"params": json.dumps(params)},
        headers={"Authorization": f"Bearer {key}", **(headers or {})},
        timeout=TIMEOUT_S,
    )


@pytest.mark.parametrize(
    ("content", "style", "codes", "words"),
    [
        # 1000x150 at size 128 is 128x19: far too few rows for the network.
        (_png(1000, 150), _png(64, 64), ["content_short_side"], ["1000x150", "19 px"]),
        (_png(64, 64, "RGBA"), _png(64, 64), ["content_alpha"], ["transparent"]),
        # A 32 px style used at 128 px is enlarged 4 times.
        (_png(64, 64), _png(32, 32), ["style_upscaled"], ["style[0] is 32x32", "4.0x"]),
        (_png(64, 64), _png(64, 64), [], []),
    ],
    ids=["elongated", "transparent", "small-style", "ordinary"],
)
def test_the_submit_poll_and_list_carry_the_warnings_of_the_inputs(
    api_server: str,
    api_key: str,
    content: bytes,
    style: bytes,
    codes: list[str],
    words: list[str],
) -> None:
    submitted = _submit(api_server, api_key, content, [style], ORDINARY)
    assert submitted.status_code == 202, submitted.text
    job = submitted.json()
    warnings = job["warnings"]
    assert [w["code"] for w in warnings] == codes
    assert all(set(w) == {"code", "message"} and w["message"] for w in warnings)
    for word in words:
        assert any(word in w["message"] for w in warnings), (word, warnings)
    auth = {"Authorization": f"Bearer {api_key}"}
    polled = httpx.get(f"{api_server}/v1/jobs/{job['id']}", headers=auth, timeout=TIMEOUT_S)
    assert polled.status_code == 200 and polled.json()["warnings"] == warnings
    listed = httpx.get(f"{api_server}/v1/jobs?limit=5", headers=auth, timeout=TIMEOUT_S)
    assert listed.status_code == 200
    (in_list,) = [j for j in listed.json()["jobs"] if j["id"] == job["id"]]
    assert in_list["warnings"] == warnings


def test_several_warnings_come_in_order_and_a_replay_gets_them_again(
    api_server: str, api_key: str
) -> None:
    content, styles = _png(1000, 150, "RGBA"), [_png(64, 64), _png(16, 16, "RGBA")]
    headers = {"Idempotency-Key": "warned-once"}
    first = _submit(api_server, api_key, content, styles, ORDINARY, headers)
    assert first.status_code == 202, first.text
    codes = [w["code"] for w in first.json()["warnings"]]
    assert codes == ["content_short_side", "content_alpha", "style_upscaled", "style_alpha"]
    assert "style[1]" in first.json()["warnings"][2]["message"]
    again = _submit(api_server, api_key, content, styles, ORDINARY, headers)
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["warnings"] == first.json()["warnings"]


def test_submit_prints_each_warning_on_stderr_and_status_lists_them(
    stylequeue_cli: StylequeueCli, tmp_path: Path
) -> None:
    content, style = tmp_path / "banner.png", tmp_path / "tiny-style.png"
    content.write_bytes(_png(1000, 150))
    style.write_bytes(_png(32, 32))
    params = [f"--param={name}={value}" for name, value in ORDINARY.items()]
    done = stylequeue_cli("submit", str(content), str(style), *params)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    lines = done.stderr.splitlines()
    assert len(lines) == 2, done.stderr
    assert lines[0].startswith("warning: the content is 1000x150: at size 128")
    assert lines[1].startswith("warning: style[0] is 32x32")
    status = stylequeue_cli("status", job_id)
    assert status.returncode == 0, status.stderr
    shown = [line for line in status.stdout.splitlines() if line.startswith("warning")]
    assert [line.split()[1] for line in shown] == ["content_short_side:", "style_upscaled:"]
    assert lines[0].removeprefix("warning: ") in shown[0]
    as_json = stylequeue_cli("status", job_id, "--json")
    codes = [w["code"] for w in json.loads(as_json.stdout)["warnings"]]
    assert codes == ["content_short_side", "style_upscaled"]


def test_submit_of_ordinary_inputs_prints_no_warning(
    stylequeue_cli: StylequeueCli, tmp_path: Path
) -> None:
    content, style = tmp_path / "square.png", tmp_path / "style.png"
    content.write_bytes(_png(64, 64))
    style.write_bytes(_png(64, 64))
    params = [f"--param={name}={value}" for name, value in ORDINARY.items()]
    done = stylequeue_cli("submit", str(content), str(style), *params)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    status = stylequeue_cli("status", done.stdout.strip())
    assert status.returncode == 0 and "warning" not in status.stdout


def test_the_admin_table_marks_the_job_and_its_page_lists_the_warnings(
    api_server: str, api_key: str, make_api_key: Callable[..., str]
) -> None:
    warned = _submit(api_server, api_key, _png(64, 64, "RGBA"), [_png(32, 32)], ORDINARY)
    plain = _submit(api_server, api_key, _png(64, 64), [_png(64, 64)], ORDINARY)
    assert warned.status_code == plain.status_code == 202
    warned_id, plain_id = warned.json()["id"], plain.json()["id"]
    with httpx.Client(base_url=api_server, timeout=TIMEOUT_S) as browser:
        login = browser.get("/admin/login")
        token = CSRF_INPUT.search(login.text)
        assert token is not None
        key = make_api_key("ops", is_admin=True)
        logged_in = browser.post(
            "/admin/login", data={"key": key, "csrf_token": token.group(1), "next": "/admin"}
        )
        assert logged_in.status_code == 303, logged_in.text
        table = browser.get("/admin")
        assert table.status_code == 200
        rows = {
            m.group(1): m.group(0)
            for m in re.finditer(r'<tr data-job="([^"]+)".*?</tr>', table.text, re.S)
        }
        assert 'title="input warnings: content_alpha, style_upscaled"' in rows[warned_id]
        assert 'data-role="warnings"' not in rows[plain_id]
        page = browser.get(f"/admin/jobs/{warned_id}")
        assert page.status_code == 200
        listed = re.search(r'<dd data-role="warnings">(.*?)</dd>', page.text, re.S)
        assert listed is not None
        for warning in warned.json()["warnings"]:
            assert f"<code>{warning['code']}</code>" in listed.group(1)
            assert str(escape(warning["message"])) in listed.group(1)
        plain_page = browser.get(f"/admin/jobs/{plain_id}")
        assert plain_page.status_code == 200 and 'data-role="warnings"' not in plain_page.text


def test_the_spec_documents_every_code_with_an_example(api_server: str) -> None:
    spec = httpx.get(f"{api_server}/openapi.json", timeout=TIMEOUT_S).json()
    schemas = spec["components"]["schemas"]
    job = schemas["JobOut"]
    assert "warnings" in job["required"]
    field = job["properties"]["warnings"]
    assert field["items"]["$ref"].endswith("/JobWarning")
    (example,) = field["examples"]
    codes = [w["code"] for w in example]
    assert codes == ["content_short_side", "content_alpha", "style_upscaled"]
    assert example[0]["message"].startswith("the content is 1000x150: at size 512")
    described = schemas["JobWarning"]["properties"]["code"]["description"]
    for code in ("content_short_side", "content_upscaled", "style_upscaled"):
        assert code in described
    assert "content_alpha" in described and "style_alpha" in described
