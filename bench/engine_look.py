"""The engine's look in numbers: content kept, objects pasted, grain, for renders on disk.

    python bench/engine_look.py grain --out /tmp/grain --size 256      # render (any checkout)
    python bench/engine_look.py measure before=/tmp/gallery-before after=/tmp/gallery \\
        grain-before=/tmp/grain-before grain-after=/tmp/grain

``grain`` renders Tübingen x The Starry Night from noise with the coarse-to-fine schedule scaled down the way the 512 px default runs it
(three passes, each twice the one before: ``size/4``, ``size/2``, ``size``; 33,
33 and 204 iterations), so that a grain left by the coarsest pass has the
period it has at 512 px. Like ``bench/gallery.py`` it uses only the engine's
public interface and runs against an older checkout (``PYTHONPATH=<checkout>``).

``measure`` reads every ``<name>.png`` of the gallery's pairs (and the grain
renders) in each labelled directory and prints, per render and label, with the
measures of ``worker/engine/measures.py`` (always this checkout's):

* structure: the gradient correlation with the content, whole and on Tübingen's
  small houses at the left and its tower;
* copy: the best and top-2% patch match of relu4_1 (3 x 3) and relu3_1 (5 x 5)
  activations with the style's (1 would be a pasted patch);
* gram: the relative Gram distance to the style per layer, relu1_1..relu5_1
  (how strongly the style is there);
* grain: the spectral power share at periods of 2-2.5 px and 3-4.5 px, and the
  residual after a 3 x 3 blur on the whole image and in Tübingen's sky.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from shared.images import decode_image  # noqa: E402
from shared.params import parse_params  # noqa: E402
from worker.engine import get_network, pil_to_tensor, schedule, tensor_to_pil, transfer  # noqa: E402

EXAMPLES = ROOT / "examples"
# Tübingen's regions, (top, left, bottom, right) as fractions of the image.
HOUSES = (0.42, 0.0, 0.68, 0.58)
TOWER = (0.15, 0.61, 0.38, 0.69)
SKY = (0.02, 0.22, 0.33, 0.6)
GRAIN_RENDERS = {
    "grain-noise": ("tubingen.jpg", ("starry_night.jpg",), {"init": "noise"}),
}


def load(name: str) -> torch.Tensor:
    return pil_to_tensor(decode_image((EXAMPLES / name).read_bytes(), field="image"))


def render_grain(out: Path, size: int) -> None:
    schedule.MIN_PASS_LONGEST_SIDE_PX = size // 4  # passes size/4, size/2, size, as at 512
    network = get_network("caffe", "cpu")
    out.mkdir(parents=True, exist_ok=True)
    for name, (content, styles, params) in GRAIN_RENDERS.items():
        if (out / f"{name}.png").exists():
            continue
        result = transfer(
            network,
            load(content),
            [load(s) for s in styles],
            parse_params({**params, "size": size}),
        )
        tensor_to_pil(result).save(out / f"{name}.png")
        print(f"{name}: rendered", flush=True)


def _inputs(name: str) -> tuple[str, tuple[str, ...]] | None:
    sys.path.insert(0, str(ROOT / "bench"))
    from gallery import PAIRS  # noqa: PLC0415

    for pair in PAIRS:
        if pair.name == name:
            return pair.content, pair.styles
    if name in GRAIN_RENDERS:
        return GRAIN_RENDERS[name][0], GRAIN_RENDERS[name][1]
    return None


def measure(labelled: list[tuple[str, Path]]) -> None:
    from worker.engine.images import resize  # noqa: PLC0415
    from worker.engine.losses import STYLE_LAYERS, gram_matrix  # noqa: PLC0415
    from worker.engine.measures import (  # noqa: PLC0415
        band_power,
        patch_copy,
        speckle,
        structure_correlation,
    )

    network = get_network("caffe", "cpu")
    names = sorted({p.stem for _, d in labelled for p in d.glob("*.png")})
    for name in names:
        inputs = _inputs(name)
        if inputs is None:
            continue
        content = load(inputs[0])
        style = load(inputs[1][0])  # the first style (a blend is measured against it)
        print(f"{name} (style {inputs[1][0]})")
        for label, directory in labelled:
            path = directory / f"{name}.png"
            if not path.exists():
                continue
            out = pil_to_tensor(Image.open(path).convert("RGB"))
            h, w = out.shape[1:]
            sh, sw = schedule.fit_longest_side(style.shape[1], style.shape[2], max(h, w))
            style_at = resize(style.unsqueeze(0), sh, sw)
            tub = inputs[0] == "tubingen.jpg"
            structure = f"{structure_correlation(out, content):.3f}"
            if tub:
                structure += (
                    f", houses {structure_correlation(out, content, HOUSES):.3f}"
                    f", tower {structure_correlation(out, content, TOWER):.3f}"
                )
            deep = patch_copy(network, out, style_at, layer="relu4_1", k=3)
            mid = patch_copy(network, out, style_at, layer="relu3_1", k=5)
            with torch.no_grad():
                a = network.features(out.unsqueeze(0), STYLE_LAYERS)
                b = network.features(style_at, STYLE_LAYERS)
                grams = [
                    float((gram_matrix(a[k]) - gram_matrix(b[k])).norm() / gram_matrix(b[k]).norm())
                    for k in STYLE_LAYERS
                ]
            grain = (
                f"{band_power(out, 2.0, 2.5):.4f} / {band_power(out, 3.0, 4.5):.4f}, "
                f"blur residual {speckle(out):.2f}"
            )
            if tub:
                grain += f", sky {speckle(out, SKY):.2f}"
            print(
                f"  {label:>14}: structure {structure}; copy relu4_1 {deep.best:.3f}/{deep.top:.3f}, "
                f"relu3_1 {mid.best:.3f}/{mid.top:.3f}; gram {' '.join(f'{g:.2f}' for g in grams)}; "
                f"grain {grain}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    grain = sub.add_parser("grain", help="render the grain pair with the scaled schedule")
    grain.add_argument("--out", type=Path, required=True)
    grain.add_argument("--size", type=int, default=256)
    meas = sub.add_parser("measure", help="measure the renders in labelled directories")
    meas.add_argument("dirs", nargs="+", help="LABEL=DIR")
    args = parser.parse_args()
    if args.command == "grain":
        render_grain(args.out, args.size)
    else:
        labelled = [(d.split("=", 1)[0], Path(d.split("=", 1)[1])) for d in args.dirs]
        measure(labelled)


if __name__ == "__main__":
    main()
