"""Property-based: hypothesis sends the /admin pages arbitrary query strings and path segments
(NUL and other control characters, huge and non-ASCII numbers, over-long text, bytes that
are not UTF-8); no answer may be a 5xx, logged in or not, on each backend (``app``).

The JSON API gets the same from schemathesis (tests/service/test_api_schemathesis.py);
the pages are HTML, outside the OpenAPI document, so they are driven here.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from urllib.parse import quote, quote_from_bytes

import pytest
from admin_ui_helpers import Submit, log_in
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.admin_ui.thumbnails import THUMB_SIZES
from shared.pagination import Cursor

EXAMPLES_PER_PAGE = 40
EXAMPLES_PER_FIELD = 30  # more for a page that reads more parameters
LIST_FIELDS = ("status", "client", "worker", "created_from", "created_to", "limit", "cursor")
FILTER_FIELDS = ("status", "client", "worker", "created_from", "created_to")
# Each page with the query parameters it reads (any other name is sent too, now and then).
PAGES = {
    "/admin": (*LIST_FIELDS, "q"),
    "/admin/stats": ("hours", "fragment"),
    "/admin/workers": ("fragment",),
    "/admin/live": ("id", "since", "here", *FILTER_FIELDS),
    "/admin/bulk": ("action", *FILTER_FIELDS),
    "/admin/jobs/{job}/losses.svg": ("v",),
    "/admin/login": ("next",),
    "/admin/jobs/{job}": (),
    "/admin/jobs/{job}/thumbs/{name}": ("size", "v"),
    "/admin/jobs/{job}/files/{name}": (),
    "/admin/{name}": (),
}

# Values as raw bytes, percent-encoded as they are sent: a few that broke pages before,
# numbers of every size and script, arbitrary text, and bytes that are not UTF-8.
# Values that broke a page once, or that a parser easily gets wrong: NUL and other control
# characters, numbers past a 32-bit column, characters that str.isdigit() takes and int()
# refuses (or takes), and the like.
EDGES = st.sampled_from(
    [
        b"",
        b" ",
        b"\x00",
        b"a\x00b",
        b"\n",
        b"\x7f",
        b"99999999999999999999",
        b"2147483648",
        b"-1",
        b"0",
        b"1_0",
        b"1e3",
        b"+5",
        "\u00b2".encode(),
        "\u0665".encode(),
        "\u2460".encode(),
        "\ufeff1".encode(),
        b"\xff",
        b"0001-01-01T00:00:00+05:00",
        b"9999-12-31T23:59:59-05:00",
        b"2026-01-01T00:00:00",
    ]
)
# Raw bytes as they are sent (percent-encoded): the edges (half the time), numbers of every
# size, good-looking values, arbitrary text, bytes that are not UTF-8, over-long text.
VALUES = st.one_of(
    EDGES,
    EDGES,
    EDGES,
    st.integers().map(lambda n: str(n).encode()),
    st.integers(min_value=2**31 - 2, max_value=2**70).map(lambda n: str(n).encode()),
    st.sampled_from(list(THUMB_SIZES) + [24, 744, 745]).map(lambda n: str(n).encode()),
    st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.binary(max_size=40),
    st.integers(min_value=200, max_value=3000).map(lambda n: b"w" * n),
)
OTHER_NAMES = st.lists(st.tuples(st.text(max_size=12), VALUES), max_size=1)
SEGMENTS = st.one_of(
    st.sampled_from(["content", "style-0", "style-999", "preview", "result", "style-\u00b2"]),
    VALUES.map(lambda raw: raw.decode("utf-8", "replace") if raw else "x"),
)
ACTIONS = ("cancel", "retry", "delete-files")
BULK_FIELDS = ("action", *FILTER_FIELDS)


def _query(pairs: list[tuple[str, bytes]]) -> str:
    return "&".join(
        f"{quote(name, safe='')}={quote_from_bytes(value, safe='')}" for name, value in pairs
    )


# A good value of each parameter: the others keep these while one is fuzzed, so a bad value
# is not hidden behind another parameter's 400.
GOOD = {
    "status": b"queued",
    "client": b"1",
    "worker": b"w1",
    "created_from": b"2026-01-01T00:00:00Z",
    "created_to": b"2030-01-01T00:00:00Z",
    "limit": b"5",
    "cursor": Cursor(datetime(2030, 1, 1, tzinfo=UTC), uuid.UUID(int=1)).encode().encode(),
    "hours": b"24",
    "size": b"96",
    "id": str(uuid.UUID(int=1)).encode(),
    "next": b"/admin/stats",
    "v": b"1",
    "q": b"7062e67f",
    "since": Cursor(datetime(2020, 1, 1, tzinfo=UTC), uuid.UUID(int=1)).encode().encode(),
    "here": b"/admin",
    "action": b"retry",
    "fragment": b"1",
}


def _pairs(fields: tuple[str, ...]) -> st.SearchStrategy[list[tuple[str, bytes]]]:
    """One of ``fields`` fuzzed (sent once or twice), each other one good or absent,
    and now and then parameters of other names."""
    if not fields:
        return OTHER_NAMES

    @st.composite
    def pairs(draw: st.DrawFn) -> list[tuple[str, bytes]]:
        target = draw(st.sampled_from(fields))
        out: list[tuple[str, bytes]] = []
        for name in fields:
            if name == target:
                out += [(name, draw(VALUES)) for _ in range(draw(st.integers(1, 2)))]
            elif draw(st.booleans()):
                out.append((name, GOOD[name]))
        return out + draw(OTHER_NAMES)

    return pairs()


@pytest.mark.slow
def test_no_admin_page_answers_a_5xx(
    app: Flask, submit: Submit, api_key: str, admin_key: str
) -> None:
    job_id = submit(api_key)
    admin = app.test_client()
    csrf = log_in(admin, admin_key)
    anonymous = app.test_client()
    jobs = st.one_of(st.just(job_id), SEGMENTS)

    def fuzz(page: str, fields: tuple[str, ...]) -> None:
        @given(
            job=jobs,
            name=SEGMENTS,
            pairs=_pairs(fields),
            logged_in=st.integers(0, 3).map(bool),  # mostly logged in
            as_json=st.booleans(),
        )
        @settings(
            max_examples=EXAMPLES_PER_PAGE + EXAMPLES_PER_FIELD * len(fields),
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def get_page(
            job: str, name: str, pairs: list[tuple[str, bytes]], logged_in: bool, as_json: bool
        ) -> None:
            path = page.format(job=quote(job, safe=""), name=quote(name, safe=""))
            url = f"{path}?{_query(pairs)}" if pairs else path
            client = admin if logged_in else anonymous
            headers = {"Accept": "application/json"} if as_json else {}
            response = client.get(url, headers=headers)
            assert response.status_code < 500, (url, response.get_data(as_text=True)[:500])

        get_page()

    for page, fields in PAGES.items():
        fuzz(page, fields)

    @given(action=st.sampled_from(ACTIONS), job=SEGMENTS, pairs=_pairs(("next",)))
    @settings(
        max_examples=EXAMPLES_PER_PAGE,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def post_action(action: str, job: str, pairs: list[tuple[str, bytes]]) -> None:
        # Never the real job's id: a random segment is no job, so nothing changes.
        url = f"/admin/jobs/{quote(job, safe='')}/{action}"
        body = _query(pairs)
        response = admin.post(
            url,
            data=body,
            headers={"X-CSRF-Token": csrf, "Content-Type": "application/x-www-form-urlencoded"},
        )
        assert response.status_code < 500, (url, body, response.get_data(as_text=True)[:500])

    post_action()

    @given(pairs=_pairs(BULK_FIELDS))
    @settings(
        max_examples=EXAMPLES_PER_PAGE,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def post_bulk(pairs: list[tuple[str, bytes]]) -> None:
        # A client id no client has: whatever else it reads, no job of the test's changes.
        body = _query([(k, v) for k, v in pairs if k != "client"] + [("client", b"2147483647")])
        response = admin.post(
            "/admin/bulk",
            data=body,
            headers={"X-CSRF-Token": csrf, "Content-Type": "application/x-www-form-urlencoded"},
        )
        assert response.status_code < 500, (body, response.get_data(as_text=True)[:500])

    post_bulk()
    assert admin.get("/admin").status_code == 200, "the session outlived the fuzzing"
