"""Where the CPU went during a benchmark phase, from /proc (Linux): who used the 2 cores.

A figure from a shared 2-core machine means little without it: the load
generator, PostgreSQL and anything else running compete with gunicorn.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: int) -> tuple[str, int, float] | None:
    """(command name, parent pid, CPU seconds used) of a process; None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The name is in parentheses and may contain spaces: split after the last ')'.
    name = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    ppid = int(fields[1])
    utime, stime = int(fields[11]), int(fields[12])
    return name, ppid, (utime + stime) / CLOCK_TICKS


def _machine_busy_s() -> float:
    """CPU seconds spent not idle, over all cores, since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / CLOCK_TICKS


def _all_processes() -> dict[int, tuple[str, int, float]]:
    found = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None:
                found[int(entry.name)] = stat
    return found


def _descendants(root: int, processes: dict[int, tuple[str, int, float]]) -> set[int]:
    family = {root}
    grew = True
    while grew:
        grew = False
        for pid, (_, ppid, _) in processes.items():
            if ppid in family and pid not in family:
                family.add(pid)
                grew = True
    return family


@dataclass
class CpuSnapshot:
    at: float
    machine_s: float
    by_group: dict[str, dict[int, float]]  # group -> pid -> CPU seconds so far


class CpuMeter:
    """CPU seconds per group (process trees by root pid, or by command name) between snapshots."""

    def __init__(self, trees: dict[str, int], names: dict[str, Iterable[str]]) -> None:
        self._trees = trees  # group -> root pid (its descendants count too)
        self._names = {group: set(names) for group, names in names.items()}

    def snapshot(self) -> CpuSnapshot:
        processes = _all_processes()
        by_group: dict[str, dict[int, float]] = {}
        for group, root in self._trees.items():
            family = _descendants(root, processes)
            by_group[group] = {pid: processes[pid][2] for pid in family if pid in processes}
        for group, names in self._names.items():
            by_group[group] = {
                pid: cpu for pid, (name, _, cpu) in processes.items() if name in names
            }
        by_group["load generator"] = {os.getpid(): sum(os.times()[:2])}
        return CpuSnapshot(time.monotonic(), _machine_busy_s(), by_group)

    @staticmethod
    def cores_used(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
        """Average cores each group used between two snapshots, plus everything else."""
        elapsed = after.at - before.at
        if elapsed <= 0:
            return {}
        # Per process: one that started meanwhile counts from zero; one that ended is lost.
        used = {
            group: sum(cpu - before.by_group[group].get(pid, 0.0) for pid, cpu in pids.items())
            / elapsed
            for group, pids in after.by_group.items()
        }
        machine = (after.machine_s - before.machine_s) / elapsed
        used["everything else"] = max(0.0, machine - sum(used.values()))
        return {group: round(cores, 2) for group, cores in used.items()}
