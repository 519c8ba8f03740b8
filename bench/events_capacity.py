"""Event streams held open while polls go on: what a held stream costs the API.

    python bench/events_capacity.py [--streams 1000] [--rate 1000] [--seconds 10] [--json]

Starts its own stack (service_stack.py: a fresh PostgreSQL database, a Redis key
prefix, gunicorn serving ``api.asgi:app`` with ``api.serving``'s settings and 2
processes of 4 threads, as ``stylequeue api`` runs it; no worker, so every job stays
queued), submits ``--jobs`` tiny jobs, then:

1. polls ``GET /v1/jobs/{id}`` open loop at ``--rate`` for ``--seconds`` with no
   stream open (the baseline);
2. opens ``--streams`` ``GET /v1/jobs/{id}/events`` (one job each, round robin over
   the jobs), each read until its first event, and measures the API processes'
   resident memory before and after (the memory per held stream);
3. polls again at the same rate with every stream held (each re-reads its job
   every few seconds meanwhile, as a stream does when nothing happens).

Prints the polls' p50 and p99 in both phases, the streams refused (503) or failed,
and the memory per stream; everything it made is removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: find the siblings

from service_http import poll_requests, submit_requests  # noqa: E402
from service_load import LoadResult, run_load  # noqa: E402
from service_stack import GunicornConfig, Stack, running_stack  # noqa: E402

OPEN_BATCH = 100  # streams opened at once
OPEN_TIMEOUT_S = 30.0
SETTLE_S = 1.0  # after the streams are open, before the memory is read


def api_rss_kib(stack: Stack) -> int:
    """The resident memory of gunicorn's worker processes (the master's children), KiB."""
    master = stack.processes["api"].pid
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields.get("PPid", "0").strip()) == master and "VmRSS" in fields:
            total += int(fields["VmRSS"].split()[0])
    return total


async def open_stream(
    stack: Stack, job_id: str
) -> tuple[str, tuple[asyncio.StreamReader, asyncio.StreamWriter] | None]:
    """One stream, read until its first event: ("ok", its connection), or why not."""
    try:
        reader, writer = await asyncio.open_connection(stack.host, stack.port)
    except OSError:
        return "connect_error", None
    writer.write(
        (
            f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: {stack.host}\r\n"
            f"Authorization: Bearer {stack.api_key}\r\nAccept: text/event-stream\r\n\r\n"
        ).encode()
    )
    try:
        async with asyncio.timeout(OPEN_TIMEOUT_S):
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                writer.close()
                return head.split(b"\r\n", 1)[0].decode(errors="replace"), None
            await reader.readuntil(b"\n\n")  # the first event (its chunk's framing aside)
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        writer.close()
        return "no_first_event", None
    return "ok", (reader, writer)


async def open_streams(
    stack: Stack, ids: list[str], count: int
) -> tuple[list[asyncio.StreamWriter], dict[str, int], float]:
    writers: list[asyncio.StreamWriter] = []
    outcomes: dict[str, int] = {}
    started = time.perf_counter()
    for first in range(0, count, OPEN_BATCH):
        batch = [open_stream(stack, ids[i % len(ids)]) for i in range(first, min(count, first + OPEN_BATCH))]  # fmt: skip
        for outcome, connection in await asyncio.gather(*batch):
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if connection is not None:
                writers.append(connection[1])
    return writers, outcomes, time.perf_counter() - started


def poll_phase(stack: Stack, polls: Any, rate: float, seconds: float) -> LoadResult:
    return asyncio.run(
        run_load(
            stack.host, stack.port, polls, total=10**9, concurrency=64,
            time_limit_s=seconds, rate=rate,
        )
    )  # fmt: skip


def figures_of(result: LoadResult) -> dict[str, Any]:
    return {
        "per_s": round(result.per_second, 1),
        "p50_ms": round(result.ms(50), 2),
        "p99_ms": round(result.ms(99), 2),
        "max_ms": round(result.ms(100), 2),
        "errors": sum(n for s, n in result.statuses.items() if s >= 400) + result.connection_errors,
    }


async def held_phase(
    stack: Stack, ids: list[str], streams: int, polls: Any, rate: float, seconds: float
) -> dict[str, Any]:
    before = api_rss_kib(stack)
    writers, outcomes, open_s = await open_streams(stack, ids, streams)
    await asyncio.sleep(SETTLE_S)
    after = api_rss_kib(stack)
    held = len(writers)
    print(f"opened {held} of {streams} streams in {open_s:.1f} s: {outcomes}", flush=True)
    result = await run_load(
        stack.host, stack.port, polls, total=10**9, concurrency=64, time_limit_s=seconds,
        rate=rate,
    )  # fmt: skip
    still_open = sum(1 for w in writers if not w.is_closing())
    for writer in writers:
        writer.close()
    return {
        "streams_open": held,
        "stream_outcomes": outcomes,
        "open_seconds": round(open_s, 2),
        "api_rss_kib_before": before,
        "api_rss_kib_after": after,
        "kib_per_stream": round((after - before) / held, 1) if held else None,
        "streams_open_after_polls": still_open,
        "polls": figures_of(result),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=1000.0, help="polls a second")
    parser.add_argument("--seconds", type=float, default=10.0, help="each poll phase")
    parser.add_argument("--jobs", type=int, default=1000, help="jobs the streams watch")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures: dict[str, Any] = {
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "gunicorn": GunicornConfig().describe(),
    }
    with running_stack(GunicornConfig()) as stack:
        submitted = asyncio.run(
            run_load(
                stack.host, stack.port, submit_requests(stack), total=args.jobs, concurrency=8,
                time_limit_s=300.0, expect_status=202, keep_bodies=args.jobs,
            )
        )  # fmt: skip
        ids = [json.loads(body)["id"] for body in submitted.bodies]
        print(f"submitted {len(ids)} jobs ({submitted.summary()})", flush=True)
        polls = poll_requests(stack, submitted.bodies)
        baseline = poll_phase(stack, polls, args.rate, args.seconds)
        figures["polls_without_streams"] = figures_of(baseline)
        print(f"polls, no stream open: {baseline.summary()}", flush=True)
        figures["with_streams"] = asyncio.run(
            held_phase(stack, ids, args.streams, polls, args.rate, args.seconds)
        )
        held = figures["with_streams"]["polls"]
        print(f"polls, {figures['with_streams']['streams_open']} streams open: {held}")
    figures["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(figures, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
