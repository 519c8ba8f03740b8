"""A gallery of the engine's look: each pair rendered with the defaults, then one contact sheet.

    python bench/gallery.py --out /tmp/gallery                  # render what is missing, then the sheet
    python bench/gallery.py --out /tmp/gallery --sheet docs/gallery-after.jpg
    python bench/gallery.py --out /tmp/gallery --compare /tmp/before --sheet docs/gallery.jpg

Every pair runs at the defaults (512 px, every other parameter as ``stylequeue
params`` lists it) except where the pair names a parameter (a blend's weights),
or at ``--size`` (the same defaults otherwise) when the CPU is short.
Renders are cached as ``<out>/<name>.png``: a second run only draws the sheet.
The images are read the way a job's are (``decode_image``), from ``examples/``.

``--compare DIR`` puts DIR's renders (an earlier version's, same names) in a
column before this run's, so a before/after sheet shows both side by side.
The script uses only the engine's public interface, so it also runs against an
older checkout (``PYTHONPATH=<checkout> python <checkout or here>/bench/gallery.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from shared.images import decode_image  # noqa: E402
from shared.params import parse_params  # noqa: E402
from worker.engine import get_network, pil_to_tensor, tensor_to_pil, transfer  # noqa: E402

EXAMPLES = ROOT / "examples"
THUMB_PX = 150  # the inputs' column
RESULT_PX = 330  # each result's longest side on the sheet


@dataclass(frozen=True)
class Pair:
    name: str
    content: str
    styles: tuple[str, ...]
    params: dict[str, Any] = field(default_factory=dict)


PAIRS: tuple[Pair, ...] = (
    # Sky, a row of small houses at the left, a strongly structured painting.
    Pair("tubingen-starry_night", "tubingen.jpg", ("starry_night.jpg",)),
    # An expressionist figure: does her face turn up in the photo, do the houses survive?
    Pair("tubingen-matisse", "tubingen.jpg", ("woman-with-hat-matisse.jpg",)),
    # A portrait in the style of a portrait.
    Pair("astronaut-matisse", "astronaut.jpg", ("woman-with-hat-matisse.jpg",)),
    # A seascape with sails: a ghost sail in the cat?
    Pair("chelsea-shipwreck", "chelsea.jpg", ("shipwreck.jpg",)),
    # From noise: is a dot grain left, are the sky's flat areas speckled?
    Pair("tubingen-starry_night-noise", "tubingen.jpg", ("starry_night.jpg",), {"init": "noise"}),
    # A blend 3:7 should lean to the second style.
    Pair(
        "tubingen-blend-starry3-matisse7",
        "tubingen.jpg",
        ("starry_night.jpg", "woman-with-hat-matisse.jpg"),
        {"style_blend": [3, 7]},
    ),
)


def load(name: str, field_name: str) -> torch.Tensor:
    return pil_to_tensor(decode_image((EXAMPLES / name).read_bytes(), field=field_name))


def render(pair: Pair, out: Path, device: str, size: int | None) -> float:
    network = get_network("caffe", device)
    params = parse_params({**pair.params, **({"size": size} if size else {})})
    content = load(pair.content, "content")
    styles = [load(s, f"style[{i}]") for i, s in enumerate(pair.styles)]
    started = time.perf_counter()
    result = transfer(network, content, styles, params)
    seconds = time.perf_counter() - started
    tensor_to_pil(result).save(out / f"{pair.name}.png")
    return seconds


def edge_steps(path: Path) -> str:
    """The last row's and column's mean step to their neighbour against the inside's (0..255)."""
    x = pil_to_tensor(Image.open(path).convert("RGB")) * 255
    rows = (x[:, 1:, :] - x[:, :-1, :]).abs().mean(dim=(0, 2))
    cols = (x[:, :, 1:] - x[:, :, :-1]).abs().mean(dim=(0, 1))
    inside = float(torch.cat([rows[2:-2], cols[2:-2]]).mean())
    return (
        f"last row {float(rows[-1]):.1f}, last column {float(cols[-1]):.1f}, "
        f"first row {float(rows[0]):.1f}, first column {float(cols[0]):.1f}, inside {inside:.1f}"
    )


def _fit(img: Image.Image, longest: int) -> Image.Image:
    img = img.convert("RGB")
    scale = longest / max(img.size)
    return img.resize(
        (max(1, round(img.width * scale)), max(1, round(img.height * scale))),
        Image.Resampling.LANCZOS,
    )


def sheet(columns: list[tuple[str, Path]], path: Path, quality: int) -> None:
    """One row per pair: the content, the style(s), then each column's render."""
    pad, label_h = 8, 18
    width = pad + THUMB_PX + pad + (RESULT_PX + pad) * len(columns)
    rows = []
    for pair in PAIRS:
        if not all((d / f"{pair.name}.png").exists() for _, d in columns):
            continue  # not rendered (yet) in every column
        inputs = [_fit(Image.open(EXAMPLES / pair.content), THUMB_PX)]
        n = len(pair.styles)
        inputs += [_fit(Image.open(EXAMPLES / s), THUMB_PX // n) for s in pair.styles]
        renders = [_fit(Image.open(d / f"{pair.name}.png"), RESULT_PX) for _, d in columns]
        height = max(
            max(r.height for r in renders),
            inputs[0].height + pad + max(i.height for i in inputs[1:]),
        )
        rows.append((pair, inputs, renders, height))
    total_h = pad + sum(label_h + h + pad for *_, h in rows) + label_h
    canvas = Image.new("RGB", (width, total_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x0 = pad + THUMB_PX + pad
    for i, (title, _) in enumerate(columns):
        draw.text((x0 + i * (RESULT_PX + pad), pad), title, fill=(0, 0, 0))
    y = pad + label_h
    for pair, inputs, renders, height in rows:
        extra = f" {json.dumps(pair.params)}" if pair.params else ""
        draw.text((pad, y), f"{pair.name}{extra}", fill=(60, 60, 60))
        y += label_h
        canvas.paste(inputs[0], (pad, y))
        sx = pad
        for style in inputs[1:]:
            canvas.paste(style, (sx, y + inputs[0].height + pad))
            sx += style.width + 2
        for i, r in enumerate(renders):
            canvas.paste(r, (x0 + i * (RESULT_PX + pad), y))
        y += height + pad
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, "JPEG", quality=quality, optimize=True, progressive=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where the renders go")
    parser.add_argument("--sheet", type=Path, help="the contact sheet (JPEG) to write")
    parser.add_argument("--compare", type=Path, help="a directory of earlier renders")
    parser.add_argument("--label", default="this version", help="this run's column title")
    parser.add_argument("--compare-label", default="before", help="the earlier column's title")
    parser.add_argument("--only", nargs="*", help="render only these pair names")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, help="render at this size instead of the default")
    parser.add_argument("--quality", type=int, default=80)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for pair in PAIRS:
        if args.only and pair.name not in args.only:
            continue
        if (args.out / f"{pair.name}.png").exists():
            continue
        seconds = render(pair, args.out, args.device, args.size)
        print(f"{pair.name}: {seconds:.0f} s", flush=True)
    for pair in PAIRS:
        if (args.out / f"{pair.name}.png").exists():
            print(f"{pair.name}: {edge_steps(args.out / f'{pair.name}.png')}")
    if args.sheet is not None:
        columns = [(args.label, args.out)]
        if args.compare is not None:
            columns.insert(0, (args.compare_label, args.compare))
        sheet(columns, args.sheet, args.quality)
        print(f"{args.sheet}: {args.sheet.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
