"""Admin list at a million jobs: keyset pages per filter shape, and the statistics.

    python bench/admin_pagination.py [--rows 1000000] [--pages 200] [--limit 50] [--explain]

Creates its own PostgreSQL database (BENCH_POSTGRES_URL, default
postgresql://root@127.0.0.1:5432/postgres names the server), migrates it,
inserts ``--rows`` jobs with INSERT … SELECT generate_series (100 clients, the
busiest ones far busier; 20 workers; created over 90 days; the last half hour
queued or running, older ones 90% succeeded, 6% failed, 4% canceled) and three
events each for a tenth of them, the migration's indexes built after the load,
ANALYZE; then pages through ``GET /v1/admin/jobs`` in-process (Flask test
client, admin key: the whole request, auth to JSON) for each filter shape, from
the first page ``--pages`` pages deep through next_cursor, and from a cursor
half-way down the table; prints p50/p95/p99 ms a page against the target (p99
≤ 50 ms), then times ``GET /v1/admin/stats`` (24 h, 7 days, 30 days) and
``/v1/admin/workers``. The database is dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the project
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other benchmarks

from service_stack import database  # noqa: E402

import migrations  # noqa: E402
from api import create_app  # noqa: E402
from api.services import EXTENSION_KEY  # noqa: E402
from shared import stats  # noqa: E402
from shared.pagination import Cursor  # noqa: E402
from shared.settings import Settings  # noqa: E402

PAGE_P99_MS_TARGET = 50.0
CLIENTS = 100
WORKERS = 20
DAYS = 90
ADMIN_KEY = "sq_bench-admin-key"


LOAD_SQL = [
    # Clients: client 1 is the admin the benchmark calls as.
    f"""INSERT INTO api_clients (id, name, key_hash, is_admin, created_at)
        SELECT g, 'client-' || g, encode(sha256(('bench' || g)::bytea), 'hex'), false,
               now() - interval '{DAYS + 1} days'
        FROM generate_series(1, {CLIENTS}) g""",
    f"SELECT setval(pg_get_serial_sequence('api_clients', 'id'), {CLIENTS})",
    # Jobs: age uniform over the period; client skewed (the first ones far busier).
    """INSERT INTO jobs (id, client_id, status, params, n_styles, idempotency_key, iteration,
                         iterations, percent, eta_seconds, attempts, worker, lease_owner,
                         lease_expires_at, cancel_requested, error_code, error_message,
                         created_at, started_at, finished_at, updated_at)
       SELECT gen_random_uuid(), s.client_id,
              s.status, '{"size": 512, "iterations": 270, "optimizer": "lbfgs", "scales": 3}',
              1, NULL,
              CASE WHEN s.status = 'succeeded' THEN 270 ELSE 0 END, 270,
              CASE WHEN s.status = 'succeeded' THEN 100 ELSE 0 END, NULL,
              CASE WHEN s.status = 'queued' THEN 0 ELSE 1 END,
              CASE WHEN s.status = 'queued' THEN NULL ELSE s.worker END,
              CASE WHEN s.status = 'running' THEN s.worker END,
              CASE WHEN s.status = 'running' THEN now() + interval '2 minutes' END,
              false,
              CASE WHEN s.status = 'failed' THEN 'out_of_memory' END,
              CASE WHEN s.status = 'failed' THEN 'CUDA out of memory' END,
              s.created_at,
              CASE WHEN s.status <> 'queued' THEN s.created_at + s.wait END,
              CASE WHEN s.status IN ('succeeded', 'failed', 'canceled')
                   THEN s.created_at + s.wait + s.run END,
              s.created_at
       FROM (
         SELECT 1 + floor(%(clients)s * power(random(), 2))::int AS client_id,
                'gpu-' || lpad(t.w::text, 2, '0') || '/' || (1000 + t.w) AS worker,
                t.created_at,
                CASE WHEN t.created_at > now() - interval '30 minutes'
                     THEN CASE WHEN t.r < 0.7 THEN 'queued' ELSE 'running' END
                     WHEN t.r < 0.90 THEN 'succeeded'
                     WHEN t.r < 0.96 THEN 'failed'
                     ELSE 'canceled' END AS status,
                make_interval(secs => 1 + 120 * power(random(), 3)) AS wait,
                make_interval(secs => 30 + 570 * random()) AS run
         FROM (SELECT now() - make_interval(secs => random() * %(seconds)s) AS created_at,
                      random() AS r, 1 + floor(random() * %(workers)s)::int AS w
               FROM generate_series(1, %(rows)s)) t
       ) s
       ORDER BY s.created_at  -- the table in creation order, as a live system writes it
    """,
    # Events for a tenth of the jobs: created, claimed, and how it ended.
    """INSERT INTO job_events (job_id, kind, attempt, worker, at, data)
       SELECT id, 'created', 0, NULL, created_at, '{}' FROM jobs WHERE random() < 0.1
       AND started_at IS NOT NULL""",
    """INSERT INTO job_events (job_id, kind, attempt, worker, at, data)
       SELECT j.id, k.kind, 1, j.worker, CASE k.kind WHEN 'claimed' THEN j.started_at
              ELSE j.finished_at END, '{}'
       FROM jobs j JOIN job_events e ON e.job_id = j.id AND e.kind = 'created'
       CROSS JOIN LATERAL (VALUES ('claimed'), (j.status::text)) k(kind)
       WHERE j.finished_at IS NOT NULL""",
]


def load(url: str, rows: int) -> None:
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        # The migration's indexes, rebuilt once after the load (faster than row by row).
        indexes = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename IN ('jobs', 'job_events')"
            " AND indexname NOT LIKE 'pk_%' AND indexname NOT LIKE 'uq_%'"
        ).fetchall()
        for name, _ in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        params = {"clients": CLIENTS, "workers": WORKERS, "seconds": DAYS * 86400, "rows": rows}
        for sql in LOAD_SQL:
            conn.execute(sql, params if "%(" in sql else None)
        inserted = time.perf_counter()
        conn.execute("SET maintenance_work_mem = '256MB'")
        for _, definition in indexes:
            conn.execute(definition)
        conn.execute("VACUUM ANALYZE")
        events = conn.execute("SELECT count(*) FROM job_events").fetchone()
        size = conn.execute("SELECT pg_size_pretty(pg_database_size(current_database()))")
        print(
            f"loaded {rows:,} jobs and {events[0] if events else 0:,} events in "
            f"{inserted - started:.1f} s, indexes + VACUUM ANALYZE "
            f"{time.perf_counter() - inserted:.1f} s; database {size.fetchone()[0]}"  # type: ignore[index]
        )


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return statistics.median(ordered), at(0.95), at(0.99)


def shapes(url: str) -> list[tuple[str, dict[str, Any]]]:
    with psycopg.connect(url) as conn:
        busiest = conn.execute(
            "SELECT client_id FROM jobs GROUP BY client_id ORDER BY count(*) DESC LIMIT 1"
        ).fetchone()
        quietest = conn.execute(
            "SELECT client_id FROM jobs GROUP BY client_id ORDER BY count(*) LIMIT 1"
        ).fetchone()
        worker = conn.execute("SELECT worker FROM jobs WHERE worker IS NOT NULL LIMIT 1").fetchone()
    assert busiest and quietest and worker
    return [
        ("none", {}),
        ("status=failed", {"status": "failed"}),
        ("status=failed,canceled", {"status": "failed,canceled"}),
        ("status=queued (recent)", {"status": "queued"}),
        (f"client (busiest, {busiest[0]})", {"client_id": busiest[0]}),
        (f"client (quietest, {quietest[0]})", {"client_id": quietest[0]}),
        (f"worker={worker[0]}", {"worker": worker[0]}),
        (
            "time range (days 30-60 ago)",
            {"created_from": _days_ago(60), "created_to": _days_ago(30)},
        ),
        ("status=failed + client", {"status": "failed", "client_id": busiest[0]}),
        ("status=succeeded + worker", {"status": "succeeded", "worker": worker[0]}),
        (
            "status=failed + time range",
            {"status": "failed", "created_from": _days_ago(60), "created_to": _days_ago(30)},
        ),
    ]


def _days_ago(days: int) -> str:
    from datetime import UTC, datetime, timedelta

    return (datetime.now(UTC) - timedelta(days=days)).isoformat()


def walk(http: Any, query: dict[str, Any], pages: int, cursor: str | None = None) -> list[float]:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    times: list[float] = []
    for _ in range(pages):
        started = time.perf_counter()
        response = http.get(
            "/v1/admin/jobs",
            query_string={**query, **({"cursor": cursor} if cursor else {})},
            headers=headers,
        )
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.json
        cursor = response.json["next_cursor"]
        if cursor is None:
            break
    return times


def explain(url: str, app: Any, query: dict[str, Any], limit: int) -> None:
    """The plan of the list query for one shape (statements captured from SQLAlchemy)."""
    from sqlalchemy import event

    engine = app.extensions[EXTENSION_KEY].db.read_engine
    captured: list[tuple[str, Any]] = []

    def grab(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "FROM jobs" in statement and "LIMIT" in statement:
            captured.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", grab)
    try:
        walk(app.test_client(), {**query, "limit": limit}, 1)
    finally:
        event.remove(engine, "before_cursor_execute", grab)
    with psycopg.connect(url) as conn:
        for statement, parameters in captured[-1:]:
            plan = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)
            print("\n".join("    " + row[0] for row in plan.fetchall()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--explain", action="store_true", help="print each shape's query plan")
    args = parser.parse_args()
    name = f"sq_bench_admin_{os.getpid()}"
    with database(name) as url, tempfile.TemporaryDirectory() as data_dir:
        migrations.upgrade(url)
        load(url, args.rows)
        settings = Settings(database_url=url, data_dir=Path(data_dir), admin_key=ADMIN_KEY)
        app = create_app(settings)
        http = app.test_client()
        walk(http, {"limit": args.limit}, 3)  # warm: connections, the admin client, caches
        print(
            f"\nGET /v1/admin/jobs, limit {args.limit}, up to {args.pages} pages deep per shape "
            "(ms per page, the whole request in-process):"
        )
        print(f"  {'shape':<34} {'pages':>5} {'p50':>7} {'p95':>7} {'p99':>7} {'max':>7}")
        everything: list[float] = []
        with psycopg.connect(url) as conn:
            middle = conn.execute(
                "SELECT created_at, id FROM jobs ORDER BY created_at DESC, id DESC "
                "OFFSET %s LIMIT 1",
                (args.rows // 2,),
            ).fetchone()
        assert middle is not None
        halfway = Cursor(middle[0], middle[1]).encode()
        runs = [(label, query, None) for label, query in shapes(url)]
        runs.append(("none, from half-way down", {}, halfway))
        runs.append(("status=failed, from half-way down", {"status": "failed"}, halfway))
        for label, query, cursor in runs:
            times = walk(http, {**query, "limit": args.limit}, args.pages, cursor)
            everything += times
            p50, p95, p99 = percentiles(times)
            print(
                f"  {label:<34} {len(times):>5} {p50:>7.2f} {p95:>7.2f} {p99:>7.2f} "
                f"{max(times):>7.2f}"
            )
            if args.explain:
                explain(url, app, query, args.limit)
        p50, p95, p99 = percentiles(everything)
        verdict = "met" if p99 <= PAGE_P99_MS_TARGET else "MISSED"
        print(
            f"  {'all pages':<34} {len(everything):>5} {p50:>7.2f} {p95:>7.2f} {p99:>7.2f} "
            f"{max(everything):>7.2f}   target p99 <= {PAGE_P99_MS_TARGET:g} ms: {verdict}"
        )
        print(
            "\nGET /v1/admin/stats and /v1/admin/workers, ms: 'cold' drops the per-process caches "
            "before each of 5 requests (all-time counts of long-finished jobs; windows over 24 h), "
            "'steady' is 20 requests after it:"
        )
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}

        def timed(path: str, query: dict[str, Any], n: int, cold: bool) -> list[float]:
            times = []
            for _ in range(n):
                if cold:
                    stats.forget_cached_counts()
                started = time.perf_counter()
                response = http.get(path, query_string=query, headers=headers)
                times.append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200, response.json
            return times

        for path, query in (
            ("/v1/admin/stats", {"hours": 24}),
            ("/v1/admin/stats", {"hours": 168}),
            ("/v1/admin/stats", {"hours": 720}),
            ("/v1/admin/workers", {}),
        ):
            cold = timed(path, query, 5, True)
            steady = timed(path, query, 20, False)
            p50, p95, _ = percentiles(steady)
            label = path + (f"?hours={query['hours']}" if query else "")
            print(
                f"  {label:<26} cold p50 {statistics.median(cold):7.1f} max {max(cold):7.1f}"
                f"   steady p50 {p50:7.1f} p95 {p95:7.1f}"
            )
        app.extensions[EXTENSION_KEY].db.dispose()


if __name__ == "__main__":
    main()
