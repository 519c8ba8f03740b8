"""GPU benchmark: 512 px, 500 L-BFGS iterations, ours against pastiche in the same run.

    PYTHONPATH=. python bench/engine_gpu.py                     # on a machine with a GPU
    PYTHONPATH=. python bench/engine_gpu.py --device cpu --size 64 --iterations 5   # smoke test

Prints, for ours (single scale, so iterations are comparable, and the default
multi-scale run) and for pastiche: seconds in all, milliseconds per iteration,
peak GPU memory (torch.cuda.max_memory_allocated) and the final loss, both
outputs scored by one function (our Objective in fp32 on the CPU at the same size,
pastiche configured to minimise the same objective; see bench/engine_cpu.py).
Targets: ours <= 2 s for 500 iterations on one H100, >= 3x pastiche.
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from engine_cpu import caffe_to_rgb, pastiche_weights, score  # noqa: E402

from shared.params import (  # noqa: E402
    DEFAULT_CONTENT_WEIGHT,
    DEFAULT_STYLE_WEIGHT,
    DEFAULT_TV_WEIGHT,
    parse_params,
)
from worker.engine import load_network, pil_to_tensor, transfer  # noqa: E402
from worker.engine.losses import Objective  # noqa: E402


def timed(device: torch.device, fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(seconds, peak MiB on the GPU or 0, result) of ``fn()``, synchronised."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else 0.0
    return seconds, peak, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument(
        "--pastiche-iterations", type=int, default=None, help="default: --iterations"
    )
    parser.add_argument("--skip-pastiche", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    n, size = args.iterations, args.size
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__} on {name}; {size} px, {n} iterations")

    content_img = Image.open(ROOT / "examples/tubingen.jpg").convert("RGB")
    style_img = Image.open(ROOT / "examples/starry_night.jpg").convert("RGB")
    content_img = content_img.resize(
        (size, round(size * content_img.height / content_img.width)), Image.Resampling.BILINEAR
    )
    style_img = style_img.resize(
        (size, round(size * style_img.height / style_img.width)), Image.Resampling.BILINEAR
    )
    content, style = pil_to_tensor(content_img), pil_to_tensor(style_img)

    load_s, _, network = timed(device, lambda: load_network("caffe", device))
    print(f"model load {load_s:.2f} s")
    scorer_net = load_network("caffe", "cpu")
    cw, sw, tvw = DEFAULT_CONTENT_WEIGHT, DEFAULT_STYLE_WEIGHT, DEFAULT_TV_WEIGHT
    scorer = Objective(
        scorer_net, content.unsqueeze(0), [style.unsqueeze(0)], [1.0],
        content_weight=cw, style_weight=sw, tv_weight=tvw,
    )  # fmt: skip

    single = parse_params({"size": size, "iterations": n, "scales": 1})
    transfer(network, content, [style], parse_params({"size": size, "iterations": 5, "scales": 1}))
    ours_s, ours_peak, ours_img = timed(device, lambda: transfer(network, content, [style], single))
    ours_loss = score(scorer, ours_img)
    print(
        f"ours, 1 pass:    {ours_s:.2f} s, {1000 * ours_s / n:.2f} ms/iteration, "
        f"peak {ours_peak:.0f} MiB, loss {ours_loss:.4g}, NaN-free {bool(torch.isfinite(ours_img).all())}"
    )
    defaults = parse_params({"size": size, "iterations": n})
    multi_s, multi_peak, multi_img = timed(
        device, lambda: transfer(network, content, [style], defaults)
    )
    print(
        f"ours, default ({defaults.scales} passes): {multi_s:.2f} s, peak {multi_peak:.0f} MiB, "
        f"loss {score(scorer, multi_img):.4g}"
    )
    if args.skip_pastiche:
        return

    import tempfile

    from pastiche.pastiche import PasticheArtist

    pn = args.pastiche_iterations or n
    tmp = Path(tempfile.mkdtemp(prefix="stylequeue-bench-"))
    atexit.register(shutil.rmtree, tmp, True)
    content_img.save(tmp / "content.png")
    style_img.save(tmp / "style.png")
    artist = PasticheArtist(
        str(tmp / "content.png"), [str(tmp / "style.png")], device=str(device),
        size=(content_img.height, content_img.width), style_size=size,
        **pastiche_weights(scorer),
    )  # fmt: skip
    artist.draw()  # warm-up

    def run_pastiche() -> None:
        for _ in range(pn):
            artist.draw()

    p_s, p_peak, _ = timed(device, run_pastiche)
    p_loss = score(scorer, caffe_to_rgb(artist.pastiche.cpu()))
    print(
        f"pastiche:        {p_s:.2f} s for {pn}, {1000 * p_s / pn:.2f} ms/iteration, "
        f"peak {p_peak:.0f} MiB, loss {p_loss:.4g} (after {pn + 1} iterations)"
    )
    print(
        f"speed-up per iteration: {(p_s / pn) / (ours_s / n):.1f}x (target >= 3); "
        f"ours {ours_s:.2f} s for {n} (target <= 2 s at 512 px on an H100)"
    )


if __name__ == "__main__":
    main()
