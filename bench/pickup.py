"""How long a job waits after its worker's machine dies, with the default settings.

    python bench/pickup.py [--runs 3]

Starts its own stack (service_stack.py: a fresh PostgreSQL database, a Redis key prefix,
the API), the scheduler (``stylequeue scheduler``: beat and the reconciler) and two real
Celery workers, all with the default lease, heartbeat and reconciler settings. Each run
submits a job long enough to outlive the measurement, waits until one worker runs it,
then SIGKILLs that worker's whole process group (its main process and its pool process at
once: what a machine that loses power looks like from outside; nothing is handed back and
nobody on that machine notices). It prints the seconds from the kill until the job runs
again on the other worker (a new attempt, polled through the API every 0.1 s), and the
seconds until the job resumed from its checkpoint. The dead worker is started again
between runs.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: find the siblings
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # and the project

from service_stack import GunicornConfig, Stack, running_stack  # noqa: E402

from cli.server_cmds import scheduler_argv, worker_argv  # noqa: E402
from shared.settings import Settings  # noqa: E402

SIZE = 64
ITERATIONS = 5000  # the most a job may ask; at 64 px far longer than a run of this benchmark
WAIT_S = 600.0


def png(seed: int) -> bytes:
    image = Image.effect_noise((SIZE, SIZE), 64 + seed).convert("RGB")
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def start(stack: Stack, name: str, argv: list[str]) -> None:
    log = open(stack.data_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
    stack.processes[name] = subprocess.Popen(
        argv, env=stack.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def wait_for(what: str, check, timeout: float = WAIT_S):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    defaults = Settings(database_url="sqlite://")
    print(
        f"defaults: lease {defaults.lease_seconds:g} s, heartbeat {defaults.heartbeat_seconds:g} s, "
        f"reconciler every {defaults.reconcile_seconds:g} s, "
        f"checkpoint every {defaults.checkpoint_seconds:g} s"
    )
    with running_stack(GunicornConfig()) as stack:
        for name in list(stack.env):
            if name.startswith("STYLEQUEUE_") and name not in {
                "STYLEQUEUE_DATABASE_URL", "STYLEQUEUE_REDIS_URL", "STYLEQUEUE_REDIS_PREFIX",
                "STYLEQUEUE_DATA_DIR", "STYLEQUEUE_DEVICE", "STYLEQUEUE_STORAGE_URL",
            }:  # fmt: skip
                del stack.env[name]  # the defaults, whatever this shell has set
        settings = Settings.from_env(stack.env)
        start(stack, "scheduler", scheduler_argv(settings, "WARNING"))
        workers = {f"w{i}": worker_argv("WARNING", hostname=f"w{i}@%h") for i in (1, 2)}
        for name, argv in workers.items():
            start(stack, name, argv)
        client = httpx.Client(
            base_url=stack.base_url, headers={"Authorization": f"Bearer {stack.api_key}"}
        )
        pickups: list[float] = []
        resumes: list[float] = []
        for run in range(args.runs):
            params = f'{{"size": {SIZE}, "iterations": {ITERATIONS}, "scales": 1}}'
            submitted = client.post(
                "/v1/jobs",
                files={"content": ("c.png", png(run)), "style": ("s.png", png(run + 100))},
                data={"params": params},
            )
            submitted.raise_for_status()
            job_id = submitted.json()["id"]

            def job(job_id: str = job_id) -> dict:  # type: ignore[type-arg]
                body: dict = client.get(f"/v1/jobs/{job_id}").json()  # type: ignore[type-arg]
                return body

            first = wait_for(
                "a worker to run the job",
                lambda: (
                    (j := job())["status"] == "running"
                    and (j.get("progress") or {}).get("iteration", 0) > 0
                    and j
                ),
            )
            owner = first["worker"]
            # Let a checkpoint be written (the resume point), then kill that machine.
            time.sleep(settings.checkpoint_seconds + 2)
            victim = next(n for n in workers if stack.processes[n].pid and _runs(stack, n, owner))
            os.killpg(stack.processes[victim].pid, signal.SIGKILL)
            stack.processes[victim].wait()
            killed_at = time.monotonic()
            again = wait_for(
                "the job to run on the other worker",
                lambda owner=owner: (
                    (j := job())["status"] == "running" and j["worker"] != owner and j
                ),
            )
            pickups.append(time.monotonic() - killed_at)
            wait_for(
                "the job to make progress again",
                lambda again=again: (
                    (job().get("progress") or {}).get("iteration", 0)
                    > (again.get("progress") or {}).get("iteration", 0)
                ),
            )
            resumes.append(time.monotonic() - killed_at)
            print(
                f"run {run + 1}: killed {victim} ({owner}); running again on {again['worker']} "
                f"after {pickups[-1]:.1f} s (attempt {again.get('attempts')}), "
                f"iterating after {resumes[-1]:.1f} s"
            )
            client.post(f"/v1/jobs/{job_id}/cancel")
            start(stack, victim, workers[victim])
        print(
            f"pickup after a dead machine: median {statistics.median(pickups):.1f} s, "
            f"max {max(pickups):.1f} s over {len(pickups)} runs; "
            f"iterating again: median {statistics.median(resumes):.1f} s"
        )


def _runs(stack: Stack, name: str, owner: str) -> bool:
    """Whether worker process ``name`` holds the lease ``owner``, its node name (``name@host``)."""
    return owner.split("@", 1)[0] == name and stack.processes[name].poll() is None


if __name__ == "__main__":
    main()
