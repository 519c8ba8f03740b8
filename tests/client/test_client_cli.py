"""The client commands through click's CliRunner, against the real API app in-process.

The commands build their client from a ClientConfig passed as click's ``obj``
(an httpx.WSGITransport into the app); everything else is the real thing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result
from client_job_driver import JobDriver, join_checked
from flask import Flask

from cli.client_cmds import EXIT_JOB_NOT_SUCCEEDED, ClientConfig
from cli.main import cli
from client import StylequeueClient

DATA = Path(__file__).resolve().parents[1] / "data"
CONTENT = str(DATA / "tubingen.png")
STYLE = str(DATA / "starry_night.png")
TINY = ["--param", "size=32", "--param", "iterations=2", "--param", "scales=1"]
RunCli = Callable[..., Result]


@pytest.fixture
def run_cli(app: Flask, api_key: str) -> RunCli:
    """``stylequeue ARGS...`` with the client going straight into the app."""

    def run(*args: str, key: str = api_key) -> Result:
        config = ClientConfig(
            lambda: StylequeueClient(
                "http://stylequeue.test", key, transport=httpx.WSGITransport(app=app)
            )
        )
        return CliRunner().invoke(cli, list(args), obj=config)

    return run


def _one_error_line(result: Result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_submit_prints_the_job_id_and_status_describes_it(run_cli: RunCli) -> None:
    submitted = run_cli("submit", CONTENT, STYLE, *TINY)
    assert submitted.exit_code == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    uuid.UUID(job_id)
    status = run_cli("status", job_id)
    assert status.exit_code == 0
    assert f"id        {job_id}" in status.stdout and "status    queued" in status.stdout
    as_json = json.loads(run_cli("status", job_id, "--json").stdout)
    assert as_json["id"] == job_id and as_json["params"]["size"] == 32


def test_submit_json_parses_param_values(run_cli: RunCli) -> None:
    result = run_cli(
        "submit", CONTENT, STYLE, STYLE, *TINY, "-p", "style_blend=[2, 1]", "-p",
        "optimizer=adam", "-p", "preserve_colors=true", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    params = json.loads(result.stdout)["params"]
    assert params["style_blend"] == [2, 1] and params["optimizer"] == "adam"
    assert params["preserve_colors"] is True


def test_a_param_without_a_value_is_a_usage_error(run_cli: RunCli) -> None:
    result = run_cli("submit", CONTENT, STYLE, "--param", "size")
    assert result.exit_code == 2 and "NAME=VALUE" in result.stderr


def test_a_bad_param_is_one_line_naming_the_field(run_cli: RunCli) -> None:
    result = run_cli("submit", CONTENT, STYLE, "--param", "size=4")
    assert result.exit_code == 1 and result.stdout == ""
    line = _one_error_line(result)
    assert "size" in line and "invalid_parameter" in line and "400" in line


def test_a_missing_input_file_is_a_usage_error(run_cli: RunCli, tmp_path: Path) -> None:
    result = run_cli("submit", str(tmp_path / "nope.png"), STYLE)
    assert result.exit_code == 2 and "nope.png" in result.stderr


def test_output_without_wait_is_a_usage_error(run_cli: RunCli) -> None:
    result = run_cli("submit", CONTENT, STYLE, "-o", "out.png")
    assert result.exit_code == 2 and "need --wait" in result.stderr


def test_list_shows_the_newest_jobs_and_filters(
    run_cli: RunCli, make_api_key: Callable[[], str]
) -> None:
    key = make_api_key()
    ids = [run_cli("submit", CONTENT, STYLE, *TINY, key=key).stdout.strip() for _ in range(3)]
    assert run_cli("cancel", ids[0], key=key).stdout.strip() == f"job {ids[0]} canceled"
    table = run_cli("list", "--limit", "2", key=key)
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "PROGRESS", "CREATED"]
    assert [line.split()[0] for line in lines[1:]] == [ids[2], ids[1]]
    canceled = json.loads(run_cli("list", "--status", "canceled", "--json", key=key).stdout)
    assert [job["id"] for job in canceled] == [ids[0]]
    nothing = run_cli("list", "--status", "succeeded", key=key)
    assert nothing.exit_code == 0 and nothing.stdout == "" and "no jobs" in nothing.stderr


def test_result_of_an_unfinished_job_is_one_error_line(run_cli: RunCli, tmp_path: Path) -> None:
    job_id = run_cli("submit", CONTENT, STYLE, *TINY).stdout.strip()
    result = run_cli("result", job_id, "-o", str(tmp_path / "out.png"))
    assert result.exit_code == 1
    assert "job_not_succeeded" in _one_error_line(result)
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_job_is_one_error_line(run_cli: RunCli) -> None:
    result = run_cli("status", str(uuid.uuid4()))
    assert result.exit_code == 1 and "job_not_found" in _one_error_line(result)


def test_submit_wait_draws_progress_and_saves_the_result(
    run_cli: RunCli,
    api_key: str,
    driver: JobDriver,
    png: Callable[[int, int], bytes],
    tmp_path: Path,
) -> None:
    result_png = png(32, 21)
    client_id = driver.client_id(api_key)
    # The worker's part: pick up the job the command is about to submit, and run it.
    thread = driver.in_background(
        lambda: driver.run(
            driver.newest_queued_job(client_id), result=result_png, steps=3, step_s=0.6
        )
    )
    out = tmp_path / "styled.png"
    result = run_cli("submit", CONTENT, STYLE, *TINY, "--wait", "-o", str(out))
    join_checked(thread)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == str(out) and out.read_bytes() == result_png
    progress = [line for line in result.stderr.splitlines() if "%" in line]
    assert any("running" in line and "ETA" in line for line in progress), result.stderr
    assert progress[-1].startswith("[") and "100.0%" in progress[-1] and "succeeded" in progress[-1]


def test_submit_wait_saves_to_the_job_id_by_default(
    run_cli: RunCli, api_key: str, driver: JobDriver, png: Callable[[int, int], bytes], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    client_id = driver.client_id(api_key)
    thread = driver.in_background(
        lambda: driver.run(driver.newest_queued_job(client_id), result=png(8, 8), steps=1)
    )
    result = run_cli("submit", CONTENT, STYLE, *TINY, "--wait")
    join_checked(thread)
    assert result.exit_code == 0, result.stderr
    saved = Path(result.stdout.strip())
    assert saved.name.endswith(".png") and (tmp_path / saved).is_file()
    uuid.UUID(saved.stem)


def test_submit_wait_on_a_failing_job_exits_non_zero_with_the_error(
    run_cli: RunCli, api_key: str, driver: JobDriver, tmp_path: Path
) -> None:
    client_id = driver.client_id(api_key)
    thread = driver.in_background(
        lambda: driver.fail(
            driver.newest_queued_job(client_id), code="engine_error", message="NaN in the loss"
        )
    )
    out = tmp_path / "never.png"
    result = run_cli("submit", CONTENT, STYLE, *TINY, "--wait", "-o", str(out))
    join_checked(thread)
    assert result.exit_code == EXIT_JOB_NOT_SUCCEEDED
    line = result.stderr.strip().splitlines()[-1]
    assert "failed" in line and "NaN in the loss" in line and "engine_error" in line
    assert not out.exists()


def test_result_saves_a_finished_job(
    run_cli: RunCli,
    api_key: str,
    driver: JobDriver,
    png: Callable[[int, int], bytes],
    tmp_path: Path,
) -> None:
    job_id = run_cli("submit", CONTENT, STYLE, *TINY).stdout.strip()
    driver.run(job_id, result=png(16, 16), steps=1, step_s=0)
    out = tmp_path / "r.png"
    result = run_cli("result", job_id, "-o", str(out))
    assert result.exit_code == 0 and out.read_bytes() == png(16, 16)


def test_without_a_key_the_command_says_which_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STYLEQUEUE_API_KEY", raising=False)
    result = CliRunner().invoke(cli, ["list"])
    assert result.exit_code == 1
    assert "STYLEQUEUE_API_KEY is not set" in result.stderr


def test_an_unreachable_server_is_one_error_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STYLEQUEUE_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("STYLEQUEUE_API_KEY", "sq_anything")
    result = CliRunner().invoke(cli, ["status", str(uuid.uuid4())])
    assert result.exit_code == 1
    assert "cannot reach the server" in _one_error_line(result)
