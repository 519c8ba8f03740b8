"""The client commands' pure parts: --param parsing, the env-driven factory, the tables."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
import pytest

from cli.client_cmds import client_from_env
from cli.params import parse_param, parse_params
from client import Job
from client.text import describe_job, job_table

JobJsonFactory = Callable[..., dict[str, Any]]


@pytest.mark.parametrize(
    ("item", "parsed"),
    [
        ("size=256", ("size", 256)),
        ("content_weight=1e-3", ("content_weight", 0.001)),
        ("optimizer=adam", ("optimizer", "adam")),
        ('optimizer="adam"', ("optimizer", "adam")),
        ("preserve_colors=true", ("preserve_colors", True)),
        ("style_blend=[1, 2.5]", ("style_blend", [1, 2.5])),
        ("seed=", ("seed", "")),
        ("note=a=b", ("note", "a=b")),
        (" size =12", ("size", 12)),
        ("tv_weight=NaN", ("tv_weight", "NaN")),
        ("tv_weight=Infinity", ("tv_weight", "Infinity")),
    ],
)
def test_parse_param(item: str, parsed: tuple[str, Any]) -> None:
    assert parse_param(item) == parsed


@pytest.mark.parametrize("item", ["size", "=3", " =3", ""])
def test_a_param_without_a_name_is_a_usage_error(item: str) -> None:
    with pytest.raises(click.BadParameter, match="NAME=VALUE"):
        parse_param(item)


def test_a_param_given_twice_keeps_the_last_value() -> None:
    assert parse_params(["size=64", "iterations=5", "size=128"]) == {"size": 128, "iterations": 5}


def test_the_factory_needs_an_api_key() -> None:
    with pytest.raises(click.ClickException, match="STYLEQUEUE_API_KEY is not set"):
        client_from_env({"STYLEQUEUE_URL": "http://127.0.0.1:1"})


def test_the_factory_rejects_a_url_that_is_not_http() -> None:
    with pytest.raises(click.ClickException, match="STYLEQUEUE_URL: expected an http"):
        client_from_env({"STYLEQUEUE_URL": "127.0.0.1:8000", "STYLEQUEUE_API_KEY": "k"})


def test_the_factory_defaults_to_the_local_api() -> None:
    with client_from_env({"STYLEQUEUE_API_KEY": "k"}) as client:
        assert client.base_url == "http://127.0.0.1:8000"


def test_describe_job_names_the_error(job_json: JobJsonFactory) -> None:
    text = describe_job(
        Job.from_json(job_json(status="failed", error={"code": "engine_error", "message": "boom"}))
    )
    assert "status    failed" in text and "error     engine_error: boom" in text


def test_job_table_aligns_columns(job_json: JobJsonFactory) -> None:
    jobs = [Job.from_json(job_json(id="a")), Job.from_json(job_json(id="bbbb", status="queued"))]
    lines = job_table(jobs).splitlines()
    assert lines[0].split() == ["ID", "STATUS", "PROGRESS", "CREATED"]
    assert lines[1].startswith("a     running  25%")
    assert lines[2].startswith("bbbb  queued   25%")
    assert len({line.index(line.split()[1]) for line in lines}) == 1
