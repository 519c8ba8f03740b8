"""What a GPU host's worker container does: the GPU-picking script from the image, run for
real against a stand-in ``nvidia-smi`` and ``stylequeue``, and the compose settings that
make a missing GPU loud.

Docker cannot run here, so the script is cut out of the Dockerfile and run with bash.
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
SCRIPT = re.search(
    r"^COPY --chmod=755 <<'EOF' /usr/local/bin/stylequeue-gpu-worker\n(.*?)^EOF$",
    DOCKERFILE,
    flags=re.MULTILINE | re.DOTALL,
)


@pytest.fixture
def host(tmp_path: Path) -> dict[str, Any]:
    """A fake host: ``nvidia-smi`` lists the GPUs in $FAKE_GPUS; ``stylequeue`` records how
    it was started instead of starting a worker."""
    assert SCRIPT is not None, "the Dockerfile writes /usr/local/bin/stylequeue-gpu-worker"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = tmp_path / "stylequeue-gpu-worker"
    script.write_text(SCRIPT.group(1))
    (bin_dir / "nvidia-smi").write_text(
        '#!/bin/sh\n[ -n "$FAKE_GPUS" ] && printf "%s\\n" $FAKE_GPUS\n'
    )
    (bin_dir / "stylequeue").write_text(
        '#!/bin/sh\necho "started: $* CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-unset}"\n'
    )
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    locks = tmp_path / "locks"
    locks.mkdir()
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "STYLEQUEUE_GPU_LOCK_DIR": str(locks),
    }
    return {"script": script, "env": env, "locks": locks}


def run_script(host: dict[str, Any], **variables: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(host["script"]), "worker-arg"],
        env={**host["env"], **variables},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture
def held_locks(host: dict[str, Any]) -> Iterator[list[int]]:
    """Lock files other workers hold; the test adds GPU numbers to hold them."""
    held: list[int] = []
    files = []

    def hold(gpu: int) -> None:
        f = open(host["locks"] / f"gpu-{gpu}.lock", "w")  # noqa: SIM115 - held until the end
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        files.append(f)
        held.append(gpu)

    host["hold"] = hold
    yield held
    for f in files:
        f.close()


def test_a_worker_takes_the_first_free_gpu(host: dict[str, Any], held_locks: list[int]) -> None:
    host["hold"](0)
    done = run_script(host, FAKE_GPUS="0 1", STYLEQUEUE_DEVICE="cuda")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "started: worker worker-arg CUDA_VISIBLE_DEVICES=1"


def test_a_replica_beyond_the_gpu_count_stops_without_a_restart_loop(
    host: dict[str, Any], held_locks: list[int]
) -> None:
    host["hold"](0)
    host["hold"](1)
    done = run_script(host, FAKE_GPUS="0 1", STYLEQUEUE_DEVICE="cuda")
    # exit 0 under "restart: on-failure" is not restarted; nothing was started
    assert (done.returncode, done.stdout) == (0, "")
    assert "every GPU (0 1) already has a worker" in done.stderr


def test_a_gpu_worker_that_sees_no_gpu_fails_loudly(host: dict[str, Any]) -> None:
    done = run_script(host, FAKE_GPUS="", STYLEQUEUE_DEVICE="cuda")
    assert (done.returncode, done.stdout) == (1, "")
    assert "STYLEQUEUE_DEVICE=cuda but no GPU is visible" in done.stderr


def test_a_worker_allowed_the_cpu_runs_on_it_when_no_gpu_is_visible(host: dict[str, Any]) -> None:
    done = run_script(host, FAKE_GPUS="", STYLEQUEUE_DEVICE="auto")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "started: worker worker-arg CUDA_VISIBLE_DEVICES=unset"


@pytest.fixture(scope="module")
def worker_service() -> dict[str, Any]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service: dict[str, Any] = compose["services"]["worker"]
    return service


def test_the_worker_asks_for_cuda_and_says_so(worker_service: dict[str, Any]) -> None:
    (device,) = worker_service["deploy"]["resources"]["reservations"]["devices"]
    assert {"gpu", "compute"} <= set(device["capabilities"])  # compute mounts libcuda
    env = worker_service["environment"]
    assert env["STYLEQUEUE_DEVICE"] == "${STYLEQUEUE_WORKER_DEVICE:-cuda}"
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    # the shared settings still reach the worker (the environment is merged, not replaced)
    assert {"STYLEQUEUE_DATABASE_URL", "STYLEQUEUE_REDIS_URL"} <= set(env)
    assert worker_service["restart"] == "on-failure"
    assert "CUDA_DEVICE_ORDER=PCI_BUS_ID" in DOCKERFILE


def test_published_ports_are_on_loopback_unless_asked() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name in ("api", "flower"):
        for port in compose["services"][name]["ports"]:
            assert re.match(r"^\$\{\w+_BIND:-127\.0\.0\.1\}:", port), (name, port)


def test_stylequeue_worker_with_device_cuda_and_no_gpu_does_not_start(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STYLEQUEUE_")}
    env.update(
        STYLEQUEUE_DEVICE="cuda",
        STYLEQUEUE_DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite'}",
        STYLEQUEUE_DATA_DIR=str(tmp_path),
    )
    stylequeue = str(Path(sys.executable).parent / "stylequeue")
    subprocess.run(
        [stylequeue, "db", "upgrade"],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    done = subprocess.run(
        [stylequeue, "worker"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert "STYLEQUEUE_DEVICE=cuda but PyTorch sees no CUDA device" in done.stderr
