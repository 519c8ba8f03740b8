"""Per-client limits on the submit, on the real PostgreSQL (and SQLite) and Redis: the
rate (429 rate_limited with its headers, nothing stored), the queued jobs (429
too_many_queued), the client's own values against the defaults, a Redis that does not
answer (fail open), and the Cancel-After header's values."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask import Flask
from limits_helpers import limited_app, limited_env, new_client, post_job, stored
from processes import free_port
from service_helpers import wait_for

from cli.main import cli
from shared import client_limits


@pytest.fixture
def lapp(database_url: str, redis_url: str, redis_prefix: str, tmp_path: Path) -> Iterator[Flask]:
    """An API with the shipped defaults but for its own key space and data dir."""
    env = limited_env(
        database_url,
        redis_url,
        f"{redis_prefix}limits-{secrets.token_hex(3)}:",
        tmp_path / "data",
        rate_limit="2",
        rate_burst="20",
        max_queued="100",
    )
    with limited_app(env) as flask_app:
        yield flask_app


def test_a_burst_over_the_rate_gets_429s_with_the_headers_and_stores_nothing(lapp: Flask) -> None:
    # A slow refill (one submit every 10 s), so that the test's own pace does not matter.
    client_id, auth = new_client(lapp, rate_limit=0.1, rate_burst=5)
    answers = [post_job(lapp, auth) for _ in range(8)]
    assert [r.status_code for r in answers] == [202] * 5 + [429] * 3, [r.json for r in answers]
    for left, accepted in zip(range(4, -1, -1), answers[:5], strict=True):
        assert accepted.headers["RateLimit-Policy"] == '"burst";q=5;w=50, "queued";q=100'
        burst, queued = accepted.headers["RateLimit"].split(", ")
        assert burst.startswith(f'"burst";r={left};t=')
        assert queued == f'"queued";r={100 - (5 - left)}'
    for refused in answers[5:]:
        assert refused.json["error"]["code"] == "rate_limited"
        assert refused.json["error"]["details"]["limit"] == "rate"
        retry = int(refused.headers["Retry-After"])
        assert 1 <= retry <= 10
        assert refused.headers["RateLimit-Policy"] == '"burst";q=5;w=50, "queued";q=100'
        assert refused.headers["RateLimit"].startswith('"burst";r=0;t=')
    # Five jobs, five directories, five messages: the refused ones stored nothing.
    assert stored(lapp, client_id) == (5, 5, 5)


def test_a_client_at_its_max_queued_gets_429_too_many_queued_until_one_leaves(lapp: Flask) -> None:
    client_id, auth = new_client(lapp, rate_limit=0, max_queued=2)
    first, second, third = (post_job(lapp, auth) for _ in range(3))
    assert (first.status_code, second.status_code, third.status_code) == (202, 202, 429)
    assert "RateLimit" not in third.headers or "burst" not in third.headers["RateLimit"]
    assert third.json["error"]["code"] == "too_many_queued"
    assert third.json["error"]["details"]["max_queued"] == 2
    assert third.headers["Retry-After"] == "5"
    assert third.headers["RateLimit-Policy"] == '"queued";q=2'
    assert third.headers["RateLimit"] == '"queued";r=0'
    assert second.headers["RateLimit"] == '"queued";r=0'
    assert stored(lapp, client_id) == (2, 2, 2)
    canceled = lapp.test_client().post(first.json["urls"]["cancel"], headers=auth)
    assert canceled.json["status"] == "canceled"
    again = post_job(lapp, auth)
    assert again.status_code == 202, again.json
    assert stored(lapp, client_id) == (3, 3, 3)


def test_the_defaults_apply_to_a_client_without_limits_and_its_own_win(lapp: Flask) -> None:
    _, default_auth = new_client(lapp)
    accepted = post_job(lapp, default_auth)
    assert accepted.headers["RateLimit-Policy"] == '"burst";q=20;w=10, "queued";q=100'
    _, unlimited_auth = new_client(lapp, rate_limit=0, max_queued=0)
    free = post_job(lapp, unlimited_auth)
    assert free.status_code == 202
    assert "RateLimit-Policy" not in free.headers and "RateLimit" not in free.headers


def test_keys_create_and_update_set_limits_that_the_api_applies(
    lapp: Flask, database_url: str, tmp_path: Path
) -> None:
    env = {"STYLEQUEUE_DATABASE_URL": database_url, "STYLEQUEUE_DATA_DIR": str(tmp_path)}
    runner = CliRunner()
    name = f"bob-{secrets.token_hex(3)}"
    created = runner.invoke(
        cli, ["keys", "create", name, "--rate", "0.1", "--burst", "2", "--weight", "3"], env=env
    )
    assert created.exit_code == 0, created.output
    auth = {"Authorization": f"Bearer {created.output.strip().splitlines()[-1]}"}
    assert [post_job(lapp, auth).status_code for _ in range(3)] == [202, 202, 429]
    listed = runner.invoke(cli, ["keys", "list"], env=env)
    assert listed.exit_code == 0, listed.output
    line = next(line for line in listed.output.splitlines() if f"\t{name}\t" in line)
    assert "rate=0.1 burst=2 max-queued=default max-running=default weight=3" in line
    updated = runner.invoke(cli, ["keys", "update", name, "--burst", "4"], env=env)
    assert updated.exit_code == 0, updated.output
    assert "burst=4" in updated.output
    # The API reads a client's limits again within a few seconds: two more fit the burst.
    wait_for("the new burst to apply", lambda: post_job(lapp, auth).status_code == 202, timeout=10)
    assert [post_job(lapp, auth).status_code for _ in range(2)] == [202, 429]
    back = runner.invoke(cli, ["keys", "update", name, "--rate", "default"], env=env)
    assert back.exit_code == 0 and "rate=default" in back.output, back.output
    bad = runner.invoke(cli, ["keys", "update", name, "--max-queued", "-1"], env=env)
    assert bad.exit_code == 2 and "0 or more" in bad.output
    nobody = runner.invoke(cli, ["keys", "update", "nobody-here", "--burst", "1"], env=env)
    assert nobody.exit_code == 1 and "no client named" in nobody.output


def test_a_redis_that_does_not_answer_lets_submits_through_with_a_log_line(
    database_url: str,
    redis_prefix: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(client_limits, "_redis_down_logged", 0.0)  # logged anew by this test
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    env = limited_env(database_url, dead_redis, f"{redis_prefix}dead:", tmp_path, rate_limit="1")
    with limited_app(env) as app, caplog.at_level(logging.WARNING):
        client_id, auth = new_client(app, rate_burst=1)
        answers = [post_job(app, auth) for _ in range(2)]
    assert [r.status_code for r in answers] == [202, 202], [r.json for r in answers]
    assert answers[0].headers["RateLimit-Policy"] == '"burst";q=1;w=1'
    assert "RateLimit" not in answers[0].headers  # no state to tell
    assert any("rate limit not checked" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "value", ["0", "-5", "soon", "", "1e3", "nan", "inf", "2592001", "10 s", "0.0"]
)
def test_a_bad_cancel_after_is_a_400_naming_the_header_and_stores_nothing(
    lapp: Flask, value: str
) -> None:
    client_id, auth = new_client(lapp)
    answer = post_job(lapp, auth, {"Cancel-After": value})
    assert answer.status_code == 400, answer.json
    assert answer.json["error"]["code"] == "invalid_cancel_after"
    assert answer.json["error"]["details"]["field"] == "Cancel-After"
    assert stored(lapp, client_id) == (0, 0, 0)


def test_cancel_after_sets_the_jobs_deadline_at(lapp: Flask) -> None:
    _, auth = new_client(lapp)
    answer = post_job(lapp, auth, {"Cancel-After": "90.5"})
    assert answer.status_code == 202, answer.json
    job = answer.json
    created = datetime.fromisoformat(job["created_at"])
    deadline = datetime.fromisoformat(job["deadline_at"])
    assert abs((deadline - created).total_seconds() - 90.5) < 1
    polled = lapp.test_client().get(job["urls"]["self"], headers=auth).json
    assert polled["deadline_at"] == job["deadline_at"]
    plain = post_job(lapp, auth).json
    assert plain["deadline_at"] is None
