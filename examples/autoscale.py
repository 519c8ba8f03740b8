"""Scale the compose file's workers on stylequeue's backlog, read from /metrics.

    python examples/autoscale.py --url http://127.0.0.1:8000/metrics \\
        --target-seconds 600 --max 4 [--min 1] [--interval 30] [--down-after 300] \\
        [--once] [--dry-run]

Every ``--interval`` seconds it reads ``stylequeue_backlog_seconds`` (the
queued jobs' expected run time plus the running jobs' remaining time) and
``stylequeue_workers_busy``, and wants

    N = ceil(backlog seconds / --target-seconds), at least the busy workers,
        clamped to [--min, --max]

workers: about ``--target-seconds`` of work each. A larger N is applied at
once; a smaller one only when every reading of the last ``--down-after``
seconds wanted no more (the largest of them is applied), so that a short lull
does not stop workers. Never fewer than the busy workers: a stopped worker
hands its job back (checkpointed, not lost), and the ones left include an idle
worker for each job handed back. ``--max`` is the number of GPUs: a compose
worker beyond them exits at once.

It applies N with ``docker compose up --detach --no-deps --no-recreate --scale
worker=N worker`` (run it from the compose project's directory); with
``--dry-run`` it only prints the N it would set. With STYLEQUEUE_METRICS_KEY in
its environment it sends that key. Standard library only.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections import deque

BACKLOG = "stylequeue_backlog_seconds"
BUSY = "stylequeue_workers_busy"
LIVE = "stylequeue_workers_live"
_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*) +(\S+)")


def unlabelled_samples(text: str) -> dict[str, float]:
    """The samples without labels of a Prometheus text exposition, by name."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        found = _SAMPLE.match(line)  # a comment, a blank line or a labelled sample does not match
        if found is not None:
            samples[found.group(1)] = float(found.group(2))
    return samples


def read_metrics(url: str, key: str | None, timeout: float = 10.0) -> dict[str, float]:
    request = urllib.request.Request(url)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return unlabelled_samples(response.read().decode("utf-8"))


def wanted(samples: dict[str, float], target_seconds: float, low: int, high: int) -> int:
    by_backlog = math.ceil(samples[BACKLOG] / target_seconds)
    return max(low, min(high, max(by_backlog, int(samples[BUSY]))))


class Scaler:
    """Ups at once; downs to the most wanted over the last ``down_after`` seconds."""

    def __init__(self, down_after: float) -> None:
        self.down_after = down_after
        self.history: deque[tuple[float, int]] = deque()
        self.current: int | None = None

    def decide(self, want: int, now: float) -> int:
        self.history.append((now, want))
        while self.history[0][0] < now - self.down_after:
            self.history.popleft()
        if self.current is None or want >= self.current:
            return want
        return max(n for _, n in self.history)


def scale(n: int) -> None:
    command = ["docker", "compose", "up", "--detach", "--no-deps", "--no-recreate"]
    subprocess.run([*command, "--scale", f"worker={n}", "worker"], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000/metrics")
    parser.add_argument("--target-seconds", type=float, default=600.0)
    parser.add_argument("--min", type=int, default=1, dest="low")
    parser.add_argument("--max", type=int, required=True, dest="high")
    parser.add_argument("--interval", type=float, default=30.0)
    parser.add_argument("--down-after", type=float, default=300.0)
    parser.add_argument("--once", action="store_true", help="one reading, then exit")
    parser.add_argument("--dry-run", action="store_true", help="print N, change nothing")
    args = parser.parse_args(argv)
    key = os.environ.get("STYLEQUEUE_METRICS_KEY")
    scaler = Scaler(args.down_after)
    while True:
        try:
            samples = read_metrics(args.url, key)
            want = wanted(samples, args.target_seconds, args.low, args.high)
        except (OSError, KeyError, ValueError) as exc:  # unreachable, refused, not stylequeue's
            print(
                f"cannot read {args.url}: {exc!r}; the workers are left as they are",
                file=sys.stderr,
            )
            if args.once:
                return 1
        else:
            n = scaler.decide(want, time.monotonic())
            print(
                f"backlog {samples[BACKLOG]:.0f} s, {samples.get(LIVE, 0):.0f} live workers"
                f" ({samples[BUSY]:.0f} busy): worker={n}" + (" (dry run)" if args.dry_run else ""),
                flush=True,
            )
            if n != scaler.current and not args.dry_run:
                scale(n)
            scaler.current = n
        if args.once:
            return 0
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
