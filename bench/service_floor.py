"""The floor under a poll: a bare Flask view under the same gunicorn, no database, no auth.

    python bench/service_floor.py [--workers 2 --threads 4] [--seconds 5]

It serves this module's ``app`` (one route returning a fixed ~900-byte job JSON,
the size of a real poll's answer) with gunicorn as ``stylequeue api`` does, loads
it like service_http.py's poll phase (16 keep-alive connections, closed loop)
and prints the requests per second and the CPU milliseconds per request. What a
real poll costs above this is the application's share; the rest is gunicorn
and Flask, which the service keeps.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from flask import Flask, Response

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: find the siblings

from service_cpu import CpuMeter  # noqa: E402
from service_load import http_request, run_load  # noqa: E402

FIXED_JOB = json.dumps(
    {"id": "00000000-0000-0000-0000-000000000000", "status": "running", "padding": "x" * 820}
)
READY_TIMEOUT_S = 30.0

app = Flask(__name__)


@app.get("/v1/jobs/<job_id>")
def fixed_job(job_id: str) -> Response:
    return Response(FIXED_JOB, mimetype="application/json")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"gunicorn did not listen on {port}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-k", "gthread", "-w", str(args.workers),
         "--threads", str(args.threads), "-b", f"127.0.0.1:{port}", "--keep-alive", "30",
         "--chdir", str(Path(__file__).resolve().parent), "service_floor:app"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        _wait_listening(port)
        request = http_request("GET", "/v1/jobs/x", host="127.0.0.1", headers={})
        meter = CpuMeter(trees={"gunicorn": server.pid}, names={})
        asyncio.run(
            run_load(
                "127.0.0.1", port, lambda _: request, total=2000, concurrency=16, time_limit_s=2.0
            )
        )  # fmt: skip  (warm-up)
        before = meter.snapshot()
        result = asyncio.run(run_load("127.0.0.1", port, lambda _: request, total=10**9,
                                      concurrency=16, time_limit_s=args.seconds))  # fmt: skip
        cores = CpuMeter.cores_used(before, meter.snapshot())
        print(
            f"bare Flask view, gunicorn gthread {args.workers} x {args.threads}: {result.summary()}"
        )
        print("  cores used:", ", ".join(f"{g} {n:.2f}" for g, n in cores.items()))
        if result.ok:
            ms = 1000.0 * cores["gunicorn"] * result.elapsed_s / result.ok
            print(f"  CPU ms per request: gunicorn {ms:.2f}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(10)


if __name__ == "__main__":
    main()
