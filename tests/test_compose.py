"""docker-compose.yml against the Compose Specification's schema, and what the schema cannot see.

The schema is vendored (tests/data/compose-spec.json; see the README beside it):
Docker cannot run here and nothing may download during the tests.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import yaml

from cli.main import cli

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "tests/data/compose-spec.json").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
GO_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|ms|s|m|h))+$")  # what "format: duration" means
OUR_SERVICES = ("migrate", "api", "worker", "scheduler", "flower")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def schema_errors(document: dict[str, Any]) -> list[str]:
    validator = jsonschema_rs.validator_for(SCHEMA)
    return [
        f"{'/'.join(map(str, e.instance_path))}: {e.message}"
        for e in validator.iter_errors(document)
    ]


def test_the_compose_file_is_valid_against_the_spec(compose: dict[str, Any]) -> None:
    assert schema_errors(compose) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("services", "worker", "deploy", "resources", "reservations", "devices"), "gpu"),
        (("services", "api", "healthcheck", "retries"), "three"),
        (("services", "api", "depends_on", "redis", "condition"), "service_ready"),
        (("services", "api", "no_such_key"), True),
    ],
)
def test_the_schema_rejects_a_broken_file(
    compose: dict[str, Any], path: tuple[str, ...], value: object
) -> None:
    broken = json.loads(json.dumps(compose))  # a deep copy
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert schema_errors(broken) != []


def test_redis_never_evicts_a_queued_job(compose: dict[str, Any]) -> None:
    command = compose["services"]["redis"]["command"]
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"


def test_workers_reserve_nvidia_gpus(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    # The script that gives each replica its own GPU is in the image.
    assert worker["command"] == ["stylequeue-gpu-worker"]
    assert "/usr/local/bin/stylequeue-gpu-worker" in DOCKERFILE
    assert "gpu-locks:/var/lock/stylequeue-gpus" in worker["volumes"]


def test_the_api_healthcheck_uses_healthz_and_readyz(compose: dict[str, Any]) -> None:
    test = " ".join(compose["services"]["api"]["healthcheck"]["test"])
    assert "/healthz" in test and "/readyz" in test


def test_every_long_running_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if service.get("restart") != "no":  # a one-shot: the others wait for it to complete
            assert "test" in service.get("healthcheck", {}), f"{name} has no healthcheck"


def test_the_scheduler_runs_celery_beat_and_is_pinged_like_a_worker(
    compose: dict[str, Any],
) -> None:
    from cli.server_cmds import scheduler_argv
    from shared.settings import Settings

    services = compose["services"]
    assert services["scheduler"]["command"] == ["stylequeue", "scheduler"]
    assert "--beat" in scheduler_argv(Settings(database_url="sqlite://"))
    assert services["scheduler"]["healthcheck"]["test"] == services["worker"]["healthcheck"]["test"]


def test_every_healthcheck_duration_is_a_go_duration(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for key in ("interval", "timeout", "start_period"):
            value = service.get("healthcheck", {}).get(key)
            assert value is None or GO_DURATION.match(value), f"{name}.healthcheck.{key}={value!r}"


def test_flower_is_optional(compose: dict[str, Any]) -> None:
    assert compose["services"]["flower"]["profiles"] == ["monitoring"]
    assert all("profiles" not in s for n, s in compose["services"].items() if n != "flower")


def test_one_image_for_api_worker_and_scheduler(compose: dict[str, Any]) -> None:
    images = {
        compose["services"][name]["image"] for name in ("migrate", "api", "worker", "scheduler")
    }
    assert images == {"stylequeue:latest"}


def test_build_targets_exist_in_the_dockerfile(compose: dict[str, Any]) -> None:
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", DOCKERFILE, flags=re.MULTILINE))
    for name in OUR_SERVICES:
        assert compose["services"][name]["build"]["target"] in stages, name


def test_dependencies_and_volumes_are_declared(compose: dict[str, Any]) -> None:
    services = compose["services"]
    declared_volumes = set(compose["volumes"])
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            assert source in declared_volumes, f"{name} mounts undeclared volume {source}"


def test_stylequeue_commands_in_the_file_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        command = service.get("command")
        if not command or command[0] != "stylequeue":
            continue
        group: Any = cli
        for word in command[1:]:
            if word.startswith("-"):
                break
            group = group.get_command(None, word)
            assert group is not None, f"{name}: `{' '.join(command)}` is not a stylequeue command"


def test_stylequeue_commands_in_the_dockerfile_exist() -> None:
    code = "\n".join(line for line in DOCKERFILE.splitlines() if not line.lstrip().startswith("#"))
    # `stylequeue NAME` in a shell line or "stylequeue", "NAME" in an exec form; not a path.
    used = set(re.findall(r'(?<![/\w-])"?stylequeue"?,? "?(\w+)', code))
    assert {"api", "worker", "stylize"} <= used
    for name in used:
        assert cli.get_command(None, name) is not None, f"`stylequeue {name}` does not exist"  # type: ignore[arg-type]


def test_the_api_ships_the_serving_model_that_reads_requests_whole(
    compose: dict[str, Any],
) -> None:
    """Compose and the image run `stylequeue api`, and that is gunicorn with the asyncio worker
    and the bridge that reads each request whole (no proxy in front is needed for slow clients)."""
    from gunicorn.workers.gasgi import ASGIWorker

    import api.serving
    from cli.server_cmds import api_argv

    command = compose["services"]["api"]["command"]
    assert command[:2] == ["stylequeue", "api"]
    cmd = re.search(r"^CMD (\[.*\])$", DOCKERFILE, flags=re.MULTILINE)
    assert cmd is not None and json.loads(cmd.group(1))[:2] == ["stylequeue", "api"]
    argv = api_argv("0.0.0.0", 8000, 2)
    assert argv[argv.index("--config") + 1] == "python:api.serving"
    assert argv[-1] == "api.asgi:app"
    assert "--worker-class" not in argv  # it comes from the serving module
    assert api.serving.worker_class == "api.serving.Worker"
    assert issubclass(api.serving.Worker, ASGIWorker)


def test_job_files_live_in_minio_and_workers_hold_no_job_volume(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["minio"]["image"].startswith("minio/minio:")
    for name in ("migrate", "api", "worker", "scheduler", "flower"):
        env = services[name]["environment"]
        assert env["STYLEQUEUE_STORAGE_URL"].startswith("s3://"), name
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000", name
        assert services[name]["depends_on"]["bucket"]["condition"] == (
            "service_completed_successfully"
        ), name
    # the bucket the URL names is the one the one-shot service makes
    bucket = services["api"]["environment"]["STYLEQUEUE_STORAGE_URL"].removeprefix("s3://")
    assert f"store/{bucket.split('/')[0]}" in " ".join(services["bucket"]["entrypoint"])
    assert not any(v.startswith("data:") for v in services["worker"]["volumes"])
