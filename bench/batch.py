"""Batches: jobs per hour one at a time against N jobs run together, and the peak memory.

    PYTHONPATH=. python bench/batch.py                        # CPU: 64, 128, 256 px; N = 2, 4, 8
    PYTHONPATH=. python bench/batch.py --device cuda --iterations 50
    PYTHONPATH=. python bench/batch.py --sizes 64 --batches 2 --iterations 2   # smoke test

For each size: one job alone (``transfer``), then N jobs of that size together
(``transfer_batch``), each job Tübingen after The Starry Night, one pass (``scales=1``)
of ``--iterations`` L-BFGS iterations, so the work per job is the same in every row.
Jobs per hour = 3600 x jobs / seconds of the run; the gain is against the one-at-a-time
row of the same size, measured in the same process (a warm-up run of each size first).

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` over the run (reset before
it); on the CPU, the process's resident-set high-water mark (VmHWM, reset through
/proc/self/clear_refs before each run, after malloc_trim gave the freed heap back)
minus the resident set just before the run,
so it counts what the run itself added (activations, L-BFGS histories), not the
network's weights, which are loaded once.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import os
import sys
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.params import parse_params  # noqa: E402
from worker.engine import load_network, pil_to_tensor, transfer  # noqa: E402
from worker.engine.batch import BatchJob, transfer_batch  # noqa: E402
from worker.engine.network import Network  # noqa: E402

EXAMPLES = ROOT / "examples"


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def reset_peak(device: torch.device) -> int:
    """Reset the peak counter; the baseline (bytes) it is measured from."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return 0
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed heap back to the system first
    with contextlib.suppress(OSError):  # not Linux: the peak then includes earlier runs
        Path("/proc/self/clear_refs").write_text("5")
    return status_kib("VmRSS") * 1024


def peak_mib(device: torch.device, baseline: int) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    return (status_kib("VmHWM") * 1024 - baseline) / 2**20


def run(
    network: Network,
    content: torch.Tensor,
    style: torch.Tensor,
    size: int,
    iterations: int,
    jobs: int,
) -> tuple[float, float]:
    """(seconds, peak MiB) of ``jobs`` jobs: one ``transfer`` when 1, else one batch."""
    params = parse_params({"size": size, "scales": 1, "iterations": iterations})
    baseline = reset_peak(network.device)
    start = time.perf_counter()
    if jobs == 1:
        transfer(network, content, [style], params)
    else:
        outs = transfer_batch(network, [BatchJob(content, [style], params) for _ in range(jobs)])
        failed = [o for o in outs if not isinstance(o, torch.Tensor)]
        if failed:
            raise failed[0]
    if network.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, peak_mib(network.device, baseline)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", default="64,128,256")
    parser.add_argument("--batches", default="2,4,8")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    network = load_network("caffe", device)
    content = pil_to_tensor(Image.open(EXAMPLES / "tubingen.jpg").convert("RGB"))
    style = pil_to_tensor(Image.open(EXAMPLES / "starry_night.jpg").convert("RGB"))
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"{os.cpu_count()} CPUs"
    print(
        f"device {device} ({name}), torch threads {torch.get_num_threads()}, "
        f"{args.iterations} iterations a job, load average {os.getloadavg()[0]:.2f}"
    )
    memory = "peak MiB (cuda max_memory_allocated)" if device.type == "cuda" else "peak MiB (RSS)"
    print(f"{'size':>5} {'N':>3} {'seconds':>8} {'jobs/hour':>10} {'gain':>6} {memory}")
    for size in (int(s) for s in args.sizes.split(",")):
        run(network, content, style, size, 1, 1)  # warm-up: allocator, oneDNN/cuDNN plans
        alone_s, alone_mib = run(network, content, style, size, args.iterations, 1)
        alone_rate = 3600 / alone_s
        print(
            f"{size:>5} {1:>3} {alone_s:>8.2f} {alone_rate:>10.0f} {1.0:>5.2f}x {alone_mib:>8.0f}"
        )
        for n in (int(b) for b in args.batches.split(",")):
            seconds, mib = run(network, content, style, size, args.iterations, n)
            rate = 3600 * n / seconds
            print(
                f"{size:>5} {n:>3} {seconds:>8.2f} {rate:>10.0f} "
                f"{rate / alone_rate:>5.2f}x {mib:>8.0f}",
                flush=True,
            )
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
