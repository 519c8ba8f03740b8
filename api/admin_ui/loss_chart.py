"""A job's loss curve as an SVG image: every attempt's total loss by iteration, on a log
scale (style transfer's losses fall by orders of magnitude), with the content and
style parts of the latest attempt. Drawn here, served as ``image/svg+xml``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from api.admin_ui.charts import AXIS, TEXT
from shared.loss_series import AttemptLosses

ATTEMPT_COLOURS = ("#2f6fdb", "#c98a1b", "#7b4fd6", "#1f9d55", "#d64545")
PART_COLOURS = {"content": "#8fb3ef", "style": "#8fd3ab"}
WIDTH, HEIGHT = 720, 270
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 28, 44


def loss_chart_svg(attempts: Sequence[AttemptLosses], iterations: int) -> str:
    """The standalone SVG document; a note instead of lines when no loss was reported."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="system-ui, sans-serif">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#fff"/>',
    ]
    latest = attempts[-1] if attempts else None
    values = [p[1] for a in attempts for p in a.points if p[1] > 0]
    if latest is not None:
        values += [p[i] for p in latest.points for i in (2, 3) if p[i] > 0]
    if not values:
        out.append(
            f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" font-size="13" '
            f'fill="{TEXT}">no loss reported yet</text></svg>'
        )
        return "".join(out)
    low = math.floor(math.log10(min(values)))
    high = math.ceil(math.log10(max(values)))
    if high == low:
        high += 1
    # To the last iteration reported: a running job's curve is not squeezed to the left.
    x_max = max(max(int(p[0]) for a in attempts for p in a.points), 1)

    def x(iteration: float) -> float:
        return LEFT + plot_w * iteration / x_max

    def y(value: float) -> float:
        return TOP + plot_h * (1 - (math.log10(value) - low) / (high - low))

    step = max(1, (high - low + 5) // 6)
    for decade in range(low, high + 1, step):
        yy = y(10.0**decade)
        out.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{yy:.1f}" y2="{yy:.1f}" '
            f'stroke="{AXIS}" stroke-width="0.5"/>'
            f'<text x="{LEFT - 6}" y="{yy + 4:.1f}" text-anchor="end" font-size="10" '
            f'fill="{TEXT}">1e{decade}</text>'
        )
    for fraction in (0, 0.25, 0.5, 0.75, 1):
        xx = LEFT + plot_w * fraction
        out.append(
            f'<text x="{xx:.1f}" y="{TOP + plot_h + 16}" text-anchor="middle" font-size="10" '
            f'fill="{TEXT}">{round(x_max * fraction)}</text>'
        )
    out.append(
        f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{TOP + plot_h}" y2="{TOP + plot_h}" '
        f'stroke="{AXIS}"/>'
    )
    legend: list[tuple[str, str, bool]] = []
    if latest is not None:
        for index, name in ((2, "content"), (3, "style")):
            _line(
                out,
                [(x(p[0]), y(p[index])) for p in latest.points if p[index] > 0],
                PART_COLOURS[name],
                dashed=True,
            )
            legend.append((f"{name} (attempt {latest.attempt})", PART_COLOURS[name], True))
    for n, attempt in enumerate(attempts):
        colour = ATTEMPT_COLOURS[n % len(ATTEMPT_COLOURS)]
        _line(out, [(x(p[0]), y(p[1])) for p in attempt.points if p[1] > 0], colour, dashed=False)
        legend.append((f"loss, attempt {attempt.attempt}", colour, False))
    lx = LEFT
    for label, colour, dashed in legend:
        dash = ' stroke-dasharray="4 3"' if dashed else ""
        out.append(
            f'<line x1="{lx}" x2="{lx + 16}" y1="12" y2="12" stroke="{colour}" '
            f'stroke-width="2"{dash}/>'
            f'<text x="{lx + 20}" y="16" font-size="11" fill="{TEXT}">{escape(label)}</text>'
        )
        lx += 28 + 6 * len(label)
    out.append(
        f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 6}" text-anchor="middle" font-size="10" '
        f'fill="{TEXT}">iteration (of {iterations})</text></svg>'
    )
    return "".join(out)


def _line(out: list[str], points: list[tuple[float, float]], colour: str, *, dashed: bool) -> None:
    if not points:
        return
    if len(points) == 1:
        px, py = points[0]
        out.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.5" fill="{colour}"/>')
        return
    path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
    dash = ' stroke-dasharray="4 3"' if dashed else ""
    width = 1.2 if dashed else 2
    out.append(
        f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="{width}"{dash}/>'
    )
