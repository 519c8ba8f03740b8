"""Service benchmark: submit and poll throughput and latency, and dispatch latency, over HTTP.

    python bench/service_http.py [--workers 2 --threads 4] [--quick] [--json]

Starts its own stack (service_stack.py: a fresh PostgreSQL database, a Redis
key prefix, gunicorn serving ``api.asgi:app``), loads it from this machine
over loopback only (service_load.py), prints the figures against the service
targets (bench/README.md), and removes everything it made. Every phase is bounded in count and
time. Phases, in this order so that no worker drains the submit backlog:

1. dispatch: one idle Celery worker (``-c 1``); ~20 tiny jobs one at a time;
   from the 202 to the first poll that sees ``running`` (polling every 5 ms),
   and the server's own ``started_at - created_at``. The worker is then stopped.
2. submit: ~64 KB content + one ~64 KB style per request (random pixels, so PNG
   cannot shrink them, and a multipart boundary of its own per request, as real
   clients send); closed loop for the most it sustains, then open loop at the
   target rate for the latency a client sees at that rate, and, when the target
   is missed, at 70% of the maximum for the latency the server can offer.
3. poll: ``GET /v1/jobs/{id}`` over the jobs just submitted, the same two ways.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: find the siblings

from service_cpu import CpuMeter  # noqa: E402
from service_load import (  # noqa: E402
    LoadResult,
    RequestBuilder,
    http_request,
    multipart_body,
    run_load,
)
from service_stack import GunicornConfig, Stack, running_stack  # noqa: E402

from client import JobStatus, StylequeueClient  # noqa: E402

SUBMITS_PER_S_TARGET = 300.0
SUBMIT_P99_MS_TARGET = 50.0
POLLS_PER_S_TARGET = 2000.0
POLL_P99_MS_TARGET = 20.0
DISPATCH_P50_MS_TARGET = 100.0

INPUT_SIDE_PX = 148  # 148 x 148 x 3 bytes of noise ≈ 64 KB as a PNG
TINY_JOB_PARAMS = {"size": 32, "iterations": 1, "scales": 1}
DISPATCH_POLL_S = 0.005
WORKER_WARMUP_TIMEOUT_S = 180.0  # the first job loads torch and VGG19 on a busy CPU
JOB_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Plan:
    """How much load each phase sends; ``--quick`` shrinks it for a smoke run."""

    dispatch_jobs: int = 20
    closed_total: int = 3000
    closed_time_s: float = 10.0
    open_time_s: float = 5.0
    poll_total: int = 40000
    submit_concurrency: int = 16
    poll_concurrency: int = 16
    open_concurrency: int = 64

    @classmethod
    def quick(cls) -> Plan:
        return cls(dispatch_jobs=3, closed_total=300, closed_time_s=3.0, open_time_s=2.0,
                   poll_total=3000)  # fmt: skip


def noise_png(seed: int) -> bytes:
    """A PNG of random pixels, about 64 KB: incompressible, so the upload really is that big."""
    raw = random.Random(seed).randbytes(INPUT_SIDE_PX * INPUT_SIDE_PX * 3)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (INPUT_SIDE_PX, INPUT_SIDE_PX), raw).save(buffer, format="PNG")
    return buffer.getvalue()


def measure_dispatch(stack: Stack, jobs: int) -> dict[str, Any]:
    """Submit tiny jobs one at a time to an idle worker; time the 202 → running step."""
    content = (Path(__file__).resolve().parents[1] / "tests/data/tubingen.png").read_bytes()
    style = (Path(__file__).resolve().parents[1] / "tests/data/starry_night.png").read_bytes()
    stack.start_worker()
    client_ms: list[float] = []
    server_ms: list[float] = []
    with StylequeueClient(stack.base_url, stack.api_key) as client:
        # Warm-up: the first job pays for importing torch and loading the network.
        warm = client.submit(content, [style], TINY_JOB_PARAMS)
        done = client.wait(warm.id, poll_interval=0.2, timeout=WORKER_WARMUP_TIMEOUT_S)
        if done.status is not JobStatus.SUCCEEDED:
            raise RuntimeError(f"warm-up job ended {done.status.value}: {done.error}")
        for _ in range(jobs):
            # Computed, not served from the result cache: the dispatch is what is timed.
            job = client.submit(content, [style], TINY_JOB_PARAMS, cache=False)
            accepted = time.perf_counter()
            while job.status is JobStatus.QUEUED:
                time.sleep(DISPATCH_POLL_S)
                job = client.get(job.id)
            client_ms.append((time.perf_counter() - accepted) * 1000.0)
            if job.started_at is not None:
                server_ms.append((job.started_at - job.created_at).total_seconds() * 1000.0)
            # One job at a time: the worker must be idle again before the next submit.
            client.wait(job.id, poll_interval=0.02, timeout=JOB_TIMEOUT_S)
    stack.stop("worker")
    return {
        "jobs": jobs,
        "client_p50_ms": round(statistics.median(client_ms), 2),
        "client_max_ms": round(max(client_ms), 2),
        "server_p50_ms": round(statistics.median(server_ms), 2) if server_ms else None,
    }


BOUNDARY_SLOT = b"sqbench-boundary-slot-0000000000"  # replaced per request; same length


def submit_requests(stack: Stack, variants: int = 8) -> RequestBuilder:
    """Multipart submits (content + one style) over a few image pairs, cycled through.

    Each request gets a boundary of its own, as real clients send (httpx, browsers):
    a server that compiles a pattern per boundary pays for it here too.
    """
    templates = []
    for n in range(variants):
        body, content_type = multipart_body(
            [("content", "content.png", noise_png(2 * n)),
             ("style", "style.png", noise_png(2 * n + 1)),
             ("params", None, json.dumps(TINY_JOB_PARAMS).encode())],
            boundary=BOUNDARY_SLOT.decode(),
        )  # fmt: skip
        headers = {"Authorization": f"Bearer {stack.api_key}", "Content-Type": content_type}
        request = http_request("POST", "/v1/jobs", host=stack.host, headers=headers, body=body)
        if request.count(BOUNDARY_SLOT) != 5:  # the header, three parts, the closing line
            raise AssertionError("the boundary slot occurs in the image data; change its text")
        templates.append(request)

    def build(i: int) -> bytes:
        boundary = f"sqbench-{i:024x}".encode()
        return templates[i % len(templates)].replace(BOUNDARY_SLOT, boundary)

    return build


def poll_requests(stack: Stack, submit_bodies: list[bytes]) -> RequestBuilder:
    headers = {"Authorization": f"Bearer {stack.api_key}", "Accept": "application/json"}
    ids = [json.loads(body)["id"] for body in submit_bodies]
    if not ids:
        raise RuntimeError("no job ids to poll: every submit failed")
    requests = [http_request("GET", f"/v1/jobs/{i}", host=stack.host, headers=headers) for i in ids]
    return lambda i: requests[i % len(requests)]


def _load(stack: Stack, label: str, requests: RequestBuilder, **kwargs: Any) -> LoadResult:
    """One load run; prints its figures and the cores each process group used meanwhile."""
    meter = CpuMeter(
        trees={"gunicorn": stack.processes["api"].pid},
        names={"postgres": ["postgres"], "redis": ["redis-server"]},
    )
    before = meter.snapshot()
    result = asyncio.run(run_load(stack.host, stack.port, requests, **kwargs))
    cores = CpuMeter.cores_used(before, meter.snapshot())
    _print(label, result.summary())
    _print("  cores used", ", ".join(f"{group} {n:.2f}" for group, n in cores.items()))
    if result.ok:
        # CPU per request depends little on what else ran: it says what 2 idle cores could do.
        per_request = {
            g: 1000.0 * cores[g] * result.elapsed_s / result.ok for g in ("gunicorn", "postgres")
        }
        _print("  CPU ms per request", ", ".join(f"{g} {ms:.2f}" for g, ms in per_request.items()))
    return result


SUSTAINABLE_FRACTION = 0.7  # below a target it misses: latency at 70% of the measured maximum


def measure(
    stack: Stack,
    name: str,
    requests: RequestBuilder,
    *,
    plan: Plan,
    concurrency: int,
    total: int,
    target_per_s: float,
    expect_status: int,
    keep_bodies: int = 0,
) -> tuple[dict[str, Any], LoadResult]:
    """Closed loop (the maximum), open loop at the target rate, and, when the target is
    out of reach, open loop at a rate the server sustains (the latency it can offer)."""
    common: dict[str, Any] = {"expect_status": expect_status}
    closed = _load(
        stack, f"{name}, closed loop, {concurrency} connections", requests, total=total,
        time_limit_s=plan.closed_time_s, concurrency=concurrency, keep_bodies=keep_bodies,
        **common,
    )  # fmt: skip
    runs = {"closed": closed}
    rates = {"at_target": target_per_s}
    if closed.per_second < target_per_s:
        rates["sustainable"] = round(SUSTAINABLE_FRACTION * closed.per_second)
    for key, rate in rates.items():
        runs[key] = _load(
            stack, f"{name}, open loop at {rate:g}/s", requests, total=10**9, rate=rate,
            time_limit_s=plan.open_time_s, concurrency=plan.open_concurrency, **common,
        )  # fmt: skip
    figures: dict[str, Any] = {"max_per_s": round(closed.per_second, 1)}
    for key, result in runs.items():
        figures[key] = {
            "offered_per_s": rates.get(key),
            "per_s": round(result.per_second, 1),
            "p50_ms": round(result.ms(50), 2),
            "p99_ms": round(result.ms(99), 2),
            "errors": sum(n for s, n in result.statuses.items() if s >= 400)
            + result.connection_errors,
        }
    return figures, closed


def run(plan: Plan, gunicorn: GunicornConfig, dispatch: bool) -> dict[str, Any]:
    figures: dict[str, Any] = {"server": gunicorn.describe(), "cpus": os.cpu_count()}
    with running_stack(gunicorn) as stack:
        if dispatch:
            figures["dispatch"] = measure_dispatch(stack, plan.dispatch_jobs)
            _print("dispatch", figures["dispatch"])
        figures["submit"], submitted = measure(
            stack, "submit", submit_requests(stack), plan=plan,
            concurrency=plan.submit_concurrency, total=plan.closed_total,
            target_per_s=SUBMITS_PER_S_TARGET, expect_status=202, keep_bodies=2000,
        )  # fmt: skip
        figures["poll"], _ = measure(
            stack, "poll", poll_requests(stack, submitted.bodies), plan=plan,
            concurrency=plan.poll_concurrency, total=plan.poll_total,
            target_per_s=POLLS_PER_S_TARGET, expect_status=200,
        )  # fmt: skip
    return figures


def verdicts(figures: dict[str, Any]) -> list[str]:
    """One line per target: the figure, the target, met or missed."""
    lines = []

    def check(name: str, value: float | None, target: float, higher_is_better: bool) -> None:
        if value is None:
            return
        met = value >= target if higher_is_better else value <= target
        sign = ">=" if higher_is_better else "<="
        lines.append(
            f"{'MET   ' if met else 'MISSED'} {name}: {value:,.1f} (target {sign} {target:g})"
        )

    submit, poll = figures["submit"], figures["poll"]
    check("submits/s (closed loop)", submit["max_per_s"], SUBMITS_PER_S_TARGET, True)
    check("submit p99 ms at 300/s", submit["at_target"]["p99_ms"], SUBMIT_P99_MS_TARGET, False)
    check("polls/s (closed loop)", poll["max_per_s"], POLLS_PER_S_TARGET, True)
    check("poll p99 ms at 2000/s", poll["at_target"]["p99_ms"], POLL_P99_MS_TARGET, False)
    if "dispatch" in figures:
        check("dispatch p50 ms (202 -> running)", figures["dispatch"]["client_p50_ms"],
              DISPATCH_P50_MS_TARGET, False)  # fmt: skip
    return lines


def _print(label: str, value: Any) -> None:
    print(f"{label}: {value}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=GunicornConfig.workers)
    parser.add_argument("--threads", type=int, default=GunicornConfig.threads)
    parser.add_argument("--worker-class", default=GunicornConfig.worker_class, help="gunicorn -k")
    parser.add_argument("--access-log", action="store_true", help="gunicorn's access log on")
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--no-dispatch", action="store_true", help="skip the Celery worker phase")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON at the end")
    args = parser.parse_args()
    plan = Plan.quick() if args.quick else Plan()
    gunicorn = GunicornConfig(
        args.workers, args.threads, args.worker_class, access_log=args.access_log
    )
    print(f"{gunicorn.describe()} on {os.cpu_count()} CPUs; load generator on loopback", flush=True)
    figures = run(plan, gunicorn, dispatch=not args.no_dispatch)
    print("\n".join(verdicts(figures)))
    if args.json:
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
