"""What checking an upload costs the API: memory and time, per image and per request.

    python bench/upload_decode.py [--repeat N]

Each case runs in a fresh Python process (so that its peak RSS is its own),
on hostile and ordinary files made here, none stored:

- ``bomb.png``: 6324x6324, 16-bit RGBA, all zero: 311 KB that decode to 320 MB.
- ``photo.jpg``: 4000x3000 baseline JPEG of noise (quality 90), an ordinary phone photo.
- ``big-progressive.jpg``: 6324x6324 progressive JPEG of a flat colour.
- ``flat.webp``: 6324x6324 lossless WebP of a flat colour (a few KB).

and for each, two ways of checking it: ``inspect_image`` (what the API does at
submit now: the header, PNG chunk checksums, a baseline JPEG decoded at 1/8, a
progressive JPEG and a WebP by their headers) and ``decode_image`` (a full decode to RGB:
what the API did before, and what a worker does). "x9" is one request's worth:
a content and eight styles through ``api.uploads.read_submission``, as a submit
would (with ``decode_image`` patched in for the "full" row). Figures: peak RSS
of the process above its RSS after the imports, and wall time of the check.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIDE = 6324


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = SIDE) -> bytes:
    """A 16-bit RGBA PNG of zeros: tiny on disk, 8 bytes a pixel decoded."""
    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + side * 8)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 16, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def make_files(directory: Path) -> dict[str, Path]:
    from PIL import Image

    files = {"bomb.png": directory / "bomb.png"}
    files["bomb.png"].write_bytes(bomb_png())
    photo = Image.effect_noise((4000, 3000), 64).convert("RGB")
    files["photo.jpg"] = directory / "photo.jpg"
    photo.save(files["photo.jpg"], "JPEG", quality=90)
    flat = Image.new("RGB", (SIDE, SIDE), (120, 80, 200))
    files["big-progressive.jpg"] = directory / "big-progressive.jpg"
    flat.save(files["big-progressive.jpg"], "JPEG", quality=90, progressive=True)
    files["flat.webp"] = directory / "flat.webp"
    flat.save(files["flat.webp"], "WEBP", lossless=True)
    return files


CHILD = r"""
import json, sys, time
sys.path.insert(0, {root!r})
from api.multipart import Form
import api.uploads as uploads
from shared import images

def status_kb(key):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])

data = open({path!r}, "rb").read()
how, count = {how!r}, {count!r}
if how == "full":
    uploads.inspect_image = lambda d, *, field, max_pixels: images.decode_image(
        d, field=field, max_pixels=max_pixels)
base = status_kb("VmRSS")
started = time.perf_counter()
form = Form(files={{"content": [data], "style": [data] * (count - 1)}} if count > 1 else
            {{"content": [data], "style": [data]}}, fields={{"params": ['{{"size": 64}}']}})
if count > 1:
    uploads.read_submission(form, max_upload_bytes=10**9, max_image_pixels=40_000_000)
elif how == "full":
    images.decode_image(data, field="content", max_pixels=40_000_000)
else:
    images.inspect_image(data, field="content", max_pixels=40_000_000)
seconds = time.perf_counter() - started
peak = status_kb("VmHWM")  # ru_maxrss would be the parent's at the fork
print(json.dumps({{"base_mb": base / 1024, "peak_mb": peak / 1024, "seconds": seconds}}))
"""


def run_case(path: Path, how: str, count: int) -> dict[str, float]:
    code = CHILD.format(root=str(ROOT), path=str(path), how=how, count=count)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=1, help="runs per case (the best is shown)")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        files = make_files(Path(tmp))
        print(f"{'file':<22}{'bytes':>9}  {'check':<8}{'n':>3}  {'peak MB':>8}  {'seconds':>8}")
        for name, path in files.items():
            for how in ("inspect", "full"):
                for count in (1, 9):
                    runs = [run_case(path, how, count) for _ in range(args.repeat)]
                    best = min(runs, key=lambda r: r["seconds"])
                    grew = max(r["peak_mb"] - r["base_mb"] for r in runs)
                    print(
                        f"{name:<22}{path.stat().st_size:>9}  {how:<8}{count:>3}  "
                        f"{grew:>8.0f}  {best['seconds']:>8.3f}"
                    )


if __name__ == "__main__":
    start = time.monotonic()
    main()
    print(f"({time.monotonic() - start:.0f} s)")
