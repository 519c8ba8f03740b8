"""The memory estimate (shared/memory_estimate.py) against the engine's measured peak, on the CPU.

    python bench/memory_estimate.py                 # 128, 256 and 384 px, L-BFGS and Adam
    python bench/memory_estimate.py --sizes 128 256 --iterations 3

Each case runs in a fresh subprocess: the network is loaded, the process's peak
resident set is reset (``/proc/self/clear_refs``), a few iterations of one pass
run at the size, and the peak's growth over the resident set before the run is
the job's measured memory (a worker's first job: the allocator's and oneDNN's
first-use costs included). L-BFGS's history is allocated zeroed and its pages are
resident only once written: with a few iterations most of it is not yet, so its
measured figure is below what the same job holds after ``LBFGS_HISTORY`` iterations. Printed beside it: the model's sum for one job and a
run's scratch (before the safety factor; the weights are loaded before the reset,
so they are left out of both), their ratio, and the full estimate the claim compares with a budget.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.memory_estimate import MIB, estimate_peak_bytes, job_bytes, run_overhead_bytes  # noqa: E402
from shared.params import parse_params  # noqa: E402

CHILD = r"""
import io, json, sys
from pathlib import Path
from PIL import Image
sys.path.insert(0, sys.argv[1])
from shared.params import parse_params
from worker.engine import load_network, pil_to_tensor, transfer

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)

data = Path(sys.argv[1]) / "tests" / "data"
params = parse_params(json.loads(sys.argv[2]))
content = pil_to_tensor(Image.open(data / "tubingen.png").convert("RGB"))
style = pil_to_tensor(Image.open(data / "starry_night.png").convert("RGB"))
network = load_network("caffe", "cpu")
Path("/proc/self/clear_refs").write_text("5")
base = status("VmRSS")
transfer(network, content, [style], params)
print(json.dumps({"peak": status("VmHWM") - base, "hw": list(content.shape[1:])}))
"""


def measure(params: dict[str, object]) -> tuple[int, tuple[int, int]]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROOT), json.dumps(params)],
        check=True,
        capture_output=True,
        text=True,
    )
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return int(figures["peak"]), (int(figures["hw"][0]), int(figures["hw"][1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 384])
    parser.add_argument("--iterations", type=int, default=4)
    args = parser.parse_args()
    print("size  optimizer  measured MiB  model MiB  measured/model  estimate MiB (cpu)")
    for size in args.sizes:
        for optimizer in ("lbfgs", "adam"):
            raw = {"size": size, "iterations": args.iterations, "scales": 1, "optimizer": optimizer}
            params = parse_params(raw)
            peak, hw = measure(raw)
            model = job_bytes(params, hw, device_kind="cpu") + run_overhead_bytes("cpu")
            estimate = estimate_peak_bytes(params, hw, 1, device_kind="cpu")
            print(
                f"{size:4d}  {optimizer:9s}  {peak / MIB:12.1f}  {model / MIB:9.1f}  "
                f"{peak / model:14.2f}  {estimate / MIB:18.1f}"
            )


if __name__ == "__main__":
    main()
