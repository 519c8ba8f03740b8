"""Result cache benchmark: a cache hit's latency through the HTTP API, beside a normal submit's.

    python bench/cache_hit.py [--submits 300] [--workers 2 --threads 4] [--json]

Starts its own stack (service_stack.py: a fresh PostgreSQL database, a Redis key
prefix, gunicorn serving ``api.asgi:app`` as ``stylequeue api`` does) and one real
Celery worker, which computes one tiny job and is then stopped. Then, one request
at a time over one keep-alive connection, interleaved so that the three kinds share
whatever else the machine does:

* hit: that job's exact inputs again: ``succeeded`` and ``cached`` in the answer;
* miss: the same images with a seed never used: looked up, not found, queued;
* off: the same images with ``cache=false``: no lookup, queued (the submit as it
  was before the cache, plus the key's hash).

Each upload is a ~64 KB content and a ~64 KB style (random pixels, which PNG cannot
shrink). Prints p50, p99 and mean milliseconds per kind, and removes everything it made.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: find the siblings

from service_stack import GunicornConfig, running_stack  # noqa: E402

INPUT_SIDE_PX = 148  # 148 x 148 x 3 bytes of noise ≈ 64 KB as a PNG
PARAMS = {"size": 32, "iterations": 1, "scales": 1}
JOB_TIMEOUT_S = 180.0  # the worker's cold start (torch, VGG19) and one tiny job
WARMUP = 20  # of each kind, not counted
KINDS = ("hit", "miss", "off")


def noise_png(seed: int) -> bytes:
    rng = random.Random(seed)
    image = Image.frombytes(
        "RGB", (INPUT_SIDE_PX, INPUT_SIDE_PX), rng.randbytes(INPUT_SIDE_PX * INPUT_SIDE_PX * 3)
    )
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def submit(
    http: httpx.Client, files: dict[str, bytes], params: dict[str, Any], cache: bool = True
) -> tuple[float, dict[str, Any]]:
    data = {"params": json.dumps(params)} | ({} if cache else {"cache": "false"})
    started = time.perf_counter()
    response = http.post(
        "/v1/jobs",
        files=[
            ("content", ("content.png", files["content"], "image/png")),
            ("style", ("style.png", files["style"], "image/png")),
        ],
        data=data,
    )
    elapsed_ms = (time.perf_counter() - started) * 1000
    if response.status_code != 202:
        raise RuntimeError(f"submit answered {response.status_code}: {response.text[:300]}")
    job: dict[str, Any] = response.json()
    return elapsed_ms, job


def wait_succeeded(http: httpx.Client, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        job: dict[str, Any] = http.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            if job["status"] != "succeeded":
                raise RuntimeError(f"the first job did not succeed: {job}")
            return job
        time.sleep(0.1)
    raise RuntimeError(f"the first job did not finish in {JOB_TIMEOUT_S:g} s")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--submits", type=int, default=300, help="counted submits of each kind")
    parser.add_argument("--workers", type=int, default=GunicornConfig.workers)
    parser.add_argument("--threads", type=int, default=GunicornConfig.threads)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    gunicorn = GunicornConfig(workers=args.workers, threads=args.threads)
    files = {"content": noise_png(1), "style": noise_png(2)}
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    with running_stack(gunicorn) as stack:
        headers = {"Authorization": f"Bearer {stack.api_key}"}
        with httpx.Client(base_url=stack.base_url, headers=headers, timeout=30.0) as http:
            stack.start_worker()
            _, first = submit(http, files, PARAMS)
            wait_succeeded(http, first["id"])
            stack.stop("worker")  # nothing drains the queued submits below
            first_result = http.get(f"/v1/jobs/{first['id']}/result").content
            seed = 1000
            for round_number in range(WARMUP + args.submits):
                for kind in KINDS:
                    if kind == "miss":
                        seed += 1
                    params = PARAMS | {"seed": seed} if kind == "miss" else PARAMS
                    elapsed_ms, job = submit(http, files, params, cache=kind != "off")
                    expected = ("succeeded", True) if kind == "hit" else ("queued", False)
                    if (job["status"], job["cached"]) != expected:
                        raise RuntimeError(f"a {kind} answered {job['status']}: {job}")
                    if round_number >= WARMUP:
                        times[kind].append(elapsed_ms)
            if http.get(f"/v1/jobs/{job['id']}/result").status_code != 409:
                raise RuntimeError("a queued job has a result")
            hits = http.get("/v1/jobs", params={"status": "succeeded", "limit": 1}).json()
            last_hit = hits["jobs"][0]["id"]
            if http.get(f"/v1/jobs/{last_hit}/result").content != first_result:
                raise RuntimeError("a cache hit's result differs from the first job's")
    figures = {
        kind: {
            "count": len(values),
            "p50_ms": round(percentile(values, 0.50), 2),
            "p99_ms": round(percentile(values, 0.99), 2),
            "mean_ms": round(statistics.fmean(values), 2),
        }
        for kind, values in times.items()
    }
    if args.json:
        print(json.dumps({"gunicorn": gunicorn.describe(), "submits": figures}, indent=2))
        return
    print(f"{gunicorn.describe()}; PostgreSQL; one request at a time over one connection")
    print(f"uploads: content {len(files['content'])} B + style {len(files['style'])} B")
    print(f"{'kind':<6}{'count':>7}{'p50 ms':>10}{'p99 ms':>10}{'mean ms':>10}")
    for kind, row in figures.items():
        print(
            f"{kind:<6}{row['count']:>7}{row['p50_ms']:>10.2f}{row['p99_ms']:>10.2f}"
            f"{row['mean_ms']:>10.2f}"
        )


if __name__ == "__main__":
    main()
