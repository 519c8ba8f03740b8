"""How much memory this worker's jobs may need: its budget, registered with it and
given to each claim (``shared.jobs.fits_memory``).

STYLEQUEUE_WORKER_MEMORY_MB when set; else the device's memory less a reserve
(``shared.memory_estimate.worker_budget_bytes``): a GPU's total memory
(``torch.cuda.mem_get_info``), or on the CPU the memory the machine has available
when the worker starts (``MemAvailable``). Read once per process.

A job's message taken by a worker it does not fit is sent on (``worker.memory_pass_on``).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

from shared.memory_estimate import worker_budget_bytes
from shared.settings import Settings


def device_memory_bytes(device: torch.device) -> int:
    """The memory a job on ``device`` can use: the GPU's total, or the CPU's available."""
    if device.type == "cuda":
        _, total = torch.cuda.mem_get_info(device)
        return int(total)
    return _available_cpu_memory()


def _available_cpu_memory() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


@functools.cache
def _budget(override_mb: float | None, device: str) -> int:
    if override_mb is not None:
        return worker_budget_bytes(0, override_mb=override_mb)
    return worker_budget_bytes(device_memory_bytes(torch.device(device)))


def budget_bytes(settings: Settings, device: torch.device) -> int:
    """This worker's budget, bytes: the largest job estimate it claims."""
    return _budget(settings.worker_memory_mb, str(device))
