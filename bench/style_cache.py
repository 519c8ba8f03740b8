"""The cache of style Gram targets: per-job time with it and without, in one process.

    nice -n 10 python bench/style_cache.py                  # 128 and 256 px, 10 and 270 iterations
    python bench/style_cache.py --sizes 64 --iterations 2 --repeats 1   # smoke test

For each size and iteration count, tubingen in the style of The Starry Night
(``examples/``, the job's defaults otherwise) is run as ``transfer`` runs it in a
worker: with the cache off (the targets computed), with a cache that misses
(computed, digested and kept: the first job of a style) and with a cache that
has the style (the targets taken from it). The three are interleaved, run by
run, each first in turn, so that a load spike from another process hits them
alike; each figure is the median over ``--repeats``. Printed: seconds per job
for each, and hit / off.
Then the time of the style targets alone at each pass size (one forward pass and
the five Gram matrices, against the digest and the lookup of a hit).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.params import parse_params  # noqa: E402
from worker.engine import default_device, get_network, pil_to_tensor, transfer  # noqa: E402
from worker.engine.images import resize  # noqa: E402
from worker.engine.losses import style_grams  # noqa: E402
from worker.engine.network import Network  # noqa: E402
from worker.engine.schedule import fit_longest_side, pass_sizes  # noqa: E402
from worker.engine.style_cache import (  # noqa: E402
    StyleCache,
    StyleTargets,
    pixels_digest,
    style_key,
)

MIB = 1024 * 1024


def synchronised(device: torch.device, fn: Callable[[], object]) -> float:
    """Seconds that ``fn()`` takes, the device synchronised before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def job_times(
    network: Network,
    content: torch.Tensor,
    style: torch.Tensor,
    size: int,
    iterations: int,
    repeats: int,
) -> dict[str, float]:
    """Median seconds per job: cache off, a missing cache (the first job), a hit."""
    params = parse_params({"size": size, "iterations": iterations})
    warm = StyleCache(256 * MIB)
    transfer(network, content, [style], params, style_targets=StyleTargets(warm))  # fills it
    runs: dict[str, list[float]] = {"off": [], "miss": [], "hit": []}
    kinds = list(runs)
    for repeat in range(repeats):
        # Each kind first in turn: none always runs right after the warm-up or another kind.
        for kind in kinds[repeat % 3 :] + kinds[: repeat % 3]:
            targets = {
                "off": StyleTargets(None),
                "miss": StyleTargets(StyleCache(256 * MIB)),
                "hit": StyleTargets(warm),
            }[kind]

            def job(t: StyleTargets = targets) -> object:
                return transfer(network, content, [style], params, style_targets=t)

            runs[kind].append(synchronised(network.device, job))
            # What each kind is: a hit computes nothing, the others take nothing from a cache.
            assert (targets.computed == 0) if kind == "hit" else (targets.cached == 0), kind
    return {kind: statistics.median(times) for kind, times in runs.items()}


def target_times(
    network: Network, content: torch.Tensor, style: torch.Tensor, size: int, repeats: int
) -> list[tuple[tuple[int, int], float, float]]:
    """Per pass of a default job at ``size``: (style size, ms to compute, ms for a hit)."""
    out = []
    styled = style.unsqueeze(0).to(network.device)
    cache = StyleCache(256 * MIB)
    for height, width in pass_sizes(content.shape[1], content.shape[2], size, 3):
        h, w = fit_longest_side(styled.shape[2], styled.shape[3], max(height, width))
        resized = resize(styled, h, w)

        def compute_one(resized: torch.Tensor = resized) -> object:
            return style_grams(network, resized)

        compute = [synchronised(network.device, compute_one) for _ in range(repeats)]

        def hit(resized: torch.Tensor = resized) -> None:
            assert cache.get(style_key(network, pixels_digest(styled), resized)) is not None

        cache.put(style_key(network, pixels_digest(styled), resized), style_grams(network, resized))
        lookup = [synchronised(network.device, hit) for _ in range(repeats)]
        out.append(((h, w), statistics.median(compute) * 1e3, statistics.median(lookup) * 1e3))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="128,256", help="job sizes, px (default 128,256)")
    parser.add_argument(
        "--iterations", default="10,270", help="iteration counts (default 10: short, 270)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of each kind (median)")
    parser.add_argument(
        "--default-repeats", type=int, default=1, help="runs of each kind at 270 iterations"
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if any)")
    args = parser.parse_args()
    device = torch.device(args.device) if args.device else default_device()
    network = get_network("caffe", device)
    content = pil_to_tensor(Image.open(ROOT / "examples" / "tubingen.jpg"))
    style = pil_to_tensor(Image.open(ROOT / "examples" / "starry_night.jpg"))
    print(
        f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads; "
        f"content {content.shape[2]}x{content.shape[1]}, style {style.shape[2]}x{style.shape[1]}"
    )
    print("size  iterations  off s   miss s  hit s   hit/off  miss/off")
    for size in (int(s) for s in args.sizes.split(",")):
        for iterations in (int(i) for i in args.iterations.split(",")):
            repeats = args.default_repeats if iterations >= 270 else args.repeats
            t = job_times(network, content, style, size, iterations, repeats)
            print(
                f"{size:4d}  {iterations:10d}  {t['off']:6.2f}  {t['miss']:6.2f}  "
                f"{t['hit']:6.2f}  {t['hit'] / t['off']:7.3f}  {t['miss'] / t['off']:8.3f}"
                f"   (median of {repeats})",
                flush=True,
            )
    print("style targets of one pass: style size, computed ms, from the cache ms (digest + lookup)")
    for size in (int(s) for s in args.sizes.split(",")):
        for (h, w), computed, hit in target_times(network, content, style, size, args.repeats):
            print(f"  {size} px job: style {w}x{h}: {computed:8.1f} ms  {hit:6.1f} ms")


if __name__ == "__main__":
    main()
