"""/metrics and the /admin pages at a million jobs: what one scrape and one page view cost.

    python bench/metrics_scrape.py [--rows 1000000] [--repeat 20]

Loads a PostgreSQL database the way bench/admin_pagination.py does (its own
database, dropped at the end; BENCH_POSTGRES_URL names the server), then times
in-process (Flask test client, the whole request): a process's first
``GET /metrics`` (it aggregates every finished job once), then later scrapes
with the per-process cache off (each reads the jobs finished since), and the /admin
pages an operator opens: the job table (first page, and filtered by status),
the stats page (24 h) and the workers page. Prints p50/p95 ms.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project
sys.path.insert(0, str(Path(__file__).resolve().parent))  # admin_pagination's loader

from admin_pagination import ADMIN_KEY, load  # noqa: E402
from service_stack import database  # noqa: E402

import migrations  # noqa: E402
from api import create_app, metrics  # noqa: E402
from api.services import EXTENSION_KEY  # noqa: E402
from shared.settings import Settings  # noqa: E402


def timed(http: object, path: str, repeat: int) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = http.get(path)  # type: ignore[attr-defined]
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (path, response.status_code)
    times.sort()
    return statistics.median(times), times[max(0, round(0.95 * len(times)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    metrics.CACHE_SECONDS = 0.0
    with database(f"sq_bench_metrics_{os.getpid()}") as url, tempfile.TemporaryDirectory() as d:
        migrations.upgrade(url)
        load(url, args.rows)
        app = create_app(Settings(database_url=url, data_dir=Path(d), admin_key=ADMIN_KEY))
        http = app.test_client()
        login = http.get("/admin/login").text
        token = re.search(r'name="csrf_token" value="([^"]+)"', login)
        assert token is not None
        http.post("/admin/login", data={"key": ADMIN_KEY, "csrf_token": token.group(1)})
        started = time.perf_counter()
        assert http.get("/metrics").status_code == 200
        first = (time.perf_counter() - started) * 1000
        print(f"\nfirst /metrics of a process (aggregates every finished job): {first:.0f} ms")
        print(f"\n{'request':<34} {'p50 ms':>8} {'p95 ms':>8}   ({args.repeat} each, in-process)")
        for path in (
            "/metrics",
            "/admin",
            "/admin?status=failed",
            "/admin?status=running&status=queued",
            "/admin/stats?hours=24",
            "/admin/workers",
        ):
            timed(http, path, 2)  # warm
            p50, p95 = timed(http, path, args.repeat)
            print(f"{path:<34} {p50:>8.1f} {p95:>8.1f}")
        app.extensions[EXTENSION_KEY].db.dispose()


if __name__ == "__main__":
    main()
