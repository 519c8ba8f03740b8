"""Jobs per hour through a real worker, one at a time against STYLEQUEUE_BATCH_MAX=N.

    python bench/batch_worker.py [--size 64] [--iterations 30] [--jobs 12] [--batch 1 4]

Starts its own stack (service_stack.py: a fresh PostgreSQL database, a Redis key
prefix, the API under gunicorn) and, for each batch size in turn, one real Celery
worker with that STYLEQUEUE_BATCH_MAX (the previous one stopped first). With the
worker up and idle, it submits ``--jobs`` jobs through the HTTP API (distinct seeds,
``cache=false``: each one runs), then polls until all have succeeded. Jobs per hour =
jobs / (last finish - first submit), measured from outside as a client sees it, so
the worker's claims, checkpoints, previews and writes are all counted; it also
prints how many jobs ran in a batch (their ``claimed`` events name ``batch_with``,
read through the admin API). ``bench/batch.py`` measures the engine alone.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: find the siblings
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # and the project

from service_stack import GunicornConfig, Stack, running_stack  # noqa: E402

WAIT_S = 1800.0


def png(seed: int, size: int) -> bytes:
    image = Image.effect_noise((size, size * 3 // 4), 64 + seed).convert("RGB")
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def live_workers(client: Clients) -> set[str]:
    answer = client.get("/v1/admin/workers")
    answer.raise_for_status()
    return {f"{w['name']}:{w['pid']}" for w in answer.json()["workers"]}


def wait_ready(stack: Stack, client: Clients, before: set[str]) -> None:
    """Until a worker process not in ``before`` has registered (it loads torch and VGG19
    first; a restarted worker keeps its name, so the pid tells them apart)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if live_workers(client) - before:
            return
        process = stack.processes["worker"]
        if process.poll() is not None:
            raise RuntimeError((stack.data_dir / "worker.log").read_text()[-3000:])
        time.sleep(0.2)
    raise RuntimeError("the worker did not register")


def run(stack: Stack, client: Clients, args: argparse.Namespace, batch: int) -> dict[str, Any]:
    before = live_workers(client)
    stack.start_worker({"STYLEQUEUE_BATCH_MAX": str(batch), "STYLEQUEUE_LOG_LEVEL": "WARNING"})
    try:
        wait_ready(stack, client, before)
        params = {"size": args.size, "iterations": args.iterations, "scales": 1}
        started = time.monotonic()
        ids = []
        for i in range(args.jobs):
            answer = client.post(
                "/v1/jobs",
                files={"content": ("c.png", png(i, 96)), "style": ("s.png", png(i + 500, 96))},
                data={"params": json.dumps({**params, "seed": i}), "cache": "false"},
            )
            answer.raise_for_status()
            ids.append(answer.json()["id"])
        finished: dict[str, float] = {}
        while len(finished) < len(ids):
            if time.monotonic() - started > WAIT_S:
                raise RuntimeError("timed out")
            for job_id in ids:
                if job_id in finished:
                    continue
                body = client.get(f"/v1/jobs/{job_id}").json()
                if body["status"] == "succeeded":
                    finished[job_id] = time.monotonic()
                elif body["status"] in ("failed", "canceled"):
                    raise RuntimeError(f"job {job_id} {body['status']}: {body.get('error')}")
            time.sleep(0.1)
        seconds = max(finished.values()) - started
        batched = 0
        for job_id in ids:
            events = client.get(f"/v1/admin/jobs/{job_id}").json().get("events", [])
            batched += any("batch_with" in (e.get("data") or {}) for e in events)
        return {"batch": batch, "seconds": seconds, "jobs_per_hour": len(ids) * 3600 / seconds,
                "joined_a_batch": batched}  # fmt: skip
    finally:
        stack.stop("worker")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    admin_key = "bench-batch-admin-" + secrets.token_hex(16)
    os.environ["STYLEQUEUE_ADMIN_KEY"] = admin_key  # the stack's processes inherit it
    with running_stack(GunicornConfig()) as stack:
        client = Clients(
            httpx.Client(base_url=stack.base_url, headers=_bearer(stack.api_key)),
            httpx.Client(base_url=stack.base_url, headers=_bearer(admin_key)),
        )
        results = [run(stack, client, args, batch) for batch in args.batch]
    base = results[0]["jobs_per_hour"]
    print(f"{args.jobs} jobs at {args.size} px, {args.iterations} iterations, one worker:")
    for r in results:
        print(
            f"  STYLEQUEUE_BATCH_MAX={r['batch']}: {r['seconds']:.1f} s, "
            f"{r['jobs_per_hour']:.0f} jobs/h ({r['jobs_per_hour'] / base:.2f}x), "
            f"{r['joined_a_batch']} of {args.jobs} joined a batch"
        )


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class Clients:
    """The user's client for its jobs, the admin's for the admin API."""

    def __init__(self, user: httpx.Client, admin: httpx.Client) -> None:
        self.user, self.admin = user, admin

    def get(self, path: str) -> httpx.Response:
        return (self.admin if path.startswith("/v1/admin") else self.user).get(path)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.user.post(path, **kwargs)


if __name__ == "__main__":
    main()
