"""Pure arithmetic of a run: image sizes per pass, the iteration split, the ETA."""

from __future__ import annotations

from collections.abc import Sequence

# VGG19 pools four times before relu5_1, so each side needs at least 16 px.
MIN_SIDE_PX = 16
# A coarse pass smaller than this on its longest side is skipped: at 64 px the
# style's deep Gram matrices see a handful of positions, so matching them copies
# the painting's composition, and the finer passes never get the content back
# (seen with tubingen x starry_night). 128 px is where crowsonkb's passes start.
MIN_PASS_LONGEST_SIDE_PX = 128


def fit_longest_side(height: int, width: int, longest: int) -> tuple[int, int]:
    """(h, w) scaled so that the longer side is ``longest``, keeping the aspect ratio."""
    if height >= width:
        return longest, max(1, round(width * longest / height))
    return max(1, round(height * longest / width)), longest


def pass_sizes(height: int, width: int, size: int, scales: int) -> list[tuple[int, int]]:
    """The (h, w) of each coarse-to-fine pass, coarsest first; the last has longest side ``size``.

    Each pass is twice the size of the one before. Passes whose longest side would
    be under MIN_PASS_LONGEST_SIDE_PX, or whose shorter side would be under
    MIN_SIDE_PX, are dropped, so there may be fewer passes than ``scales``.
    """
    sizes: list[tuple[int, int]] = []
    for k in reversed(range(scales)):
        longest = round(size / 2**k)
        if k > 0 and longest < MIN_PASS_LONGEST_SIDE_PX:
            continue
        h, w = fit_longest_side(height, width, longest)
        if k > 0 and min(h, w) < MIN_SIDE_PX:
            continue
        if sizes and sizes[-1] == (h, w):
            continue
        sizes.append((h, w))
    return sizes


# Each coarse pass's share of the iterations; the finest pass gets the rest.
# Measured (256 px tubingen x starry_night): after the upscale the fine pass needs
# ~125-145 iterations to rebuild the fine texture however long the coarse pass ran
# (a 250-iteration 128 px pass even made it slower than a 100-iteration one), so
# iterations spent past the coarse layout are wasted; an eighth (33 of the default
# 270) settles the layout.
COARSE_PASS_SHARE = 1 / 8


def split_iterations(total: int, passes: int) -> list[int]:
    """Split ``total`` iterations over ``passes`` coarse-to-fine passes, coarsest first.

    Each coarse pass gets COARSE_PASS_SHARE of the total (rounded down), the finest
    pass the rest. A coarse pass costs a quarter of the next one per iteration and
    only has to settle the large-scale layout; the fine texture is rebuilt at the
    finest size in any case. Passes that would get no iteration are kept at 0.
    """
    if passes < 1:
        raise ValueError("passes must be >= 1")
    coarse = int(total * COARSE_PASS_SHARE) if passes > 1 else 0
    coarse = min(coarse, total // passes)  # never more than an equal share
    return [coarse] * (passes - 1) + [total - coarse * (passes - 1)]


def eta_seconds(
    elapsed: float,
    done: int,
    pass_iterations: Sequence[int],
    pass_pixels: Sequence[int],
) -> float | None:
    """Seconds left, assuming an iteration costs in proportion to its pass's pixel count.

    ``done`` iterations (over all passes) took ``elapsed`` seconds; None until one is done.
    """
    if done <= 0 or elapsed <= 0:
        return None
    work_done = 0.0
    work_total = 0.0
    remaining = done
    for iterations, pixels in zip(pass_iterations, pass_pixels, strict=True):
        work_total += iterations * pixels
        counted = min(iterations, remaining)
        work_done += counted * pixels
        remaining -= counted
    if work_done <= 0:
        return None
    return max(0.0, elapsed * (work_total - work_done) / work_done)
