"""Charts for the stats page as inline SVG, drawn here: no JavaScript, nothing fetched."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup

from shared.models import JobStatus
from shared.stats import JobStats

STATUS_COLOURS = {
    "queued": "#8a93a3",
    "running": "#2f6fdb",
    "succeeded": "#1f9d55",
    "failed": "#d64545",
    "canceled": "#c98a1b",
}
SERIES_COLOURS = ("#2f6fdb", "#1f9d55")
AXIS = "#c5cad3"
TEXT = "#4a5263"


def _nice_max(value: float) -> float:
    """A round axis maximum at or above ``value`` (1, 2, 5 × 10^n)."""
    if value <= 0:
        return 1.0
    magnitude = 1.0
    while magnitude * 10 <= value:
        magnitude *= 10
    while magnitude > value:
        magnitude /= 10
    for step in (1, 2, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude


def _num(value: float) -> str:
    return f"{value:g}" if value < 1e6 else f"{value:.3g}"


def bar_chart(
    labels: Sequence[str],
    groups: Sequence[tuple[str, Sequence[tuple[str, str, Sequence[int]]]]],
    *,
    width: int = 1080,
    height: int = 260,
    label_every: int = 3,
) -> Markup:
    """Vertical bars, one group per label: each group is a bar per entry of ``groups``,
    and each such bar stacks its parts (name, colour, values), bottom first. A legend
    names every part on top; a bar's tooltip gives its parts' values."""
    left, right, top, bottom = 36, 8, 24, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    totals = [
        [sum(values[i] for _, _, values in parts) for i in range(len(labels))]
        for _, parts in groups
    ]
    peak = _nice_max(max((v for bar in totals for v in bar), default=0))
    n = max(len(labels), 1)
    group_w = plot_w / n
    bar_w = max(1.0, (group_w - 2) / max(len(groups), 1))
    parts_out = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'xmlns="http://www.w3.org/2000/svg">'
    ]
    _grid(parts_out, left, width - right, top, plot_h, peak)
    legend_x = left
    for _, parts in groups:
        for name, colour, _ in parts:
            parts_out.append(
                f'<rect x="{legend_x}" y="6" width="10" height="10" rx="2" fill="{colour}"/>'
                f'<text x="{legend_x + 14}" y="15" font-size="11" fill="{TEXT}">'
                f"{escape(name)}</text>"
            )
            legend_x += 24 + 7 * len(name)
    for g, (group_name, parts) in enumerate(groups):
        for i in range(len(labels)):
            x = left + i * group_w + 1 + g * bar_w
            base = float(top + plot_h)
            tip = ", ".join(f"{name} {values[i]}" for name, _, values in parts)
            parts_out.append(f"<g><title>{escape(labels[i])} {escape(group_name)}: {tip}</title>")
            for _, colour, values in parts:
                h = plot_h * values[i] / peak
                if h > 0:
                    parts_out.append(
                        f'<rect x="{x:.1f}" y="{base - h:.1f}" width="{bar_w:.1f}" '
                        f'height="{h:.1f}" fill="{colour}"/>'
                    )
                base -= h
            parts_out.append("</g>")
    _x_labels(parts_out, labels, left, group_w, height, label_every)
    parts_out.append("</svg>")
    return Markup("".join(parts_out))


def line_chart(
    labels: Sequence[str],
    name: str,
    values: Sequence[int],
    *,
    colour: str = "#8a93a3",
    width: int = 1080,
    height: int = 180,
    label_every: int = 3,
) -> Markup:
    """One series as a line with its area filled, a point per label (the queue's depth)."""
    left, right, top, bottom = 36, 8, 24, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = _nice_max(max(values, default=0))
    n = max(len(labels), 1)
    group_w = plot_w / n
    out = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'xmlns="http://www.w3.org/2000/svg">'
    ]
    _grid(out, left, width - right, top, plot_h, peak)
    out.append(
        f'<rect x="{left}" y="6" width="10" height="10" rx="2" fill="{colour}"/>'
        f'<text x="{left + 14}" y="15" font-size="11" fill="{TEXT}">{escape(name)}</text>'
    )
    points = [
        (left + (i + 0.5) * group_w, top + plot_h * (1 - v / peak)) for i, v in enumerate(values)
    ]
    if points:
        line = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        area = f"{points[0][0]:.1f},{top + plot_h} {line} {points[-1][0]:.1f},{top + plot_h}"
        out.append(f'<polygon points="{area}" fill="{colour}" fill-opacity="0.18"/>')
        out.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for (x, y), label, v in zip(points, labels, values, strict=True):
            out.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{2.5 if n <= 60 else 1.2}" '
                f'fill="{colour}"><title>{escape(label)}: {v} waiting</title></circle>'
            )
    _x_labels(out, labels, left, group_w, height, label_every)
    out.append("</svg>")
    return Markup("".join(out))


def _grid(out: list[str], x0: float, x1: float, top: float, plot_h: float, peak: float) -> None:
    for fraction in (0, 0.5, 1):
        y = top + plot_h * (1 - fraction)
        out.append(
            f'<line x1="{x0}" x2="{x1}" y1="{y:.1f}" y2="{y:.1f}" stroke="{AXIS}" '
            f'stroke-width="{1 if fraction == 0 else 0.5}"/>'
            f'<text x="{x0 - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="10" '
            f'fill="{TEXT}">{_num(peak * fraction)}</text>'
        )


def _x_labels(
    out: list[str],
    labels: Sequence[str],
    left: float,
    group_w: float,
    height: int,
    label_every: int,
) -> None:
    for i, label in enumerate(labels):
        if i % label_every == 0 or i == len(labels) - 1:
            x = left + (i + 0.5) * group_w
            out.append(
                f'<text x="{x:.1f}" y="{height - 10}" text-anchor="middle" font-size="10" '
                f'fill="{TEXT}">{escape(label)}</text>'
            )


def hbar_chart(
    rows: Sequence[tuple[str, float | None, str]],
    *,
    width: int = 520,
    unit: str = "",
) -> Markup:
    """Horizontal bars, one per (label, value, colour); a None value shows as a dash."""
    row_h, left, right = 26, 84, 72
    height = row_h * max(len(rows), 1) + 8
    peak = _nice_max(max((v for _, v, _ in rows if v is not None), default=0))
    plot_w = width - left - right
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'xmlns="http://www.w3.org/2000/svg">'
    ]
    for i, (label, value, colour) in enumerate(rows):
        y = 4 + i * row_h
        parts.append(
            f'<text x="{left - 8}" y="{y + 15}" text-anchor="end" font-size="12" '
            f'fill="{TEXT}">{escape(label)}</text>'
            f'<rect x="{left}" y="{y + 3}" width="{plot_w}" height="16" rx="3" fill="#f1f3f6"/>'
        )
        if value is None:
            text = "–"
        else:
            w = plot_w * value / peak
            parts.append(
                f'<rect x="{left}" y="{y + 3}" width="{w:.1f}" height="16" rx="3" fill="{colour}"/>'
            )
            text = format_seconds(value) if unit == "s" else _num(value)
        parts.append(
            f'<text x="{left + plot_w + 6}" y="{y + 15}" font-size="12" fill="{TEXT}">'
            f"{escape(text)}</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def format_seconds(value: float | None) -> str:
    """A duration for people: 850 ms, 12.4 s, 3 min 05 s, 2 h 10 min."""
    if value is None:
        return "–"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 60:
        return f"{value:.1f} s"
    if value < 3600:
        minutes, seconds = divmod(int(round(value)), 60)
        return f"{minutes} min {seconds:02d} s"
    hours, rest = divmod(int(round(value)), 3600)
    return f"{hours} h {rest // 60:02d} min"


def stats_charts(stats: JobStats) -> dict[str, Markup]:
    """The stats page's charts: ``throughput`` (created, and finished by outcome, per
    bucket), ``queue`` (jobs waiting at each bucket's end), ``counts`` by status,
    ``timings``."""
    buckets = stats.buckets
    by_day = stats.bucket_hours > 1
    labels = [b.start.strftime("%m-%d" if by_day else "%H:00") for b in buckets]
    every = max(1, len(buckets) // (16 if by_day else 12))
    throughput = bar_chart(
        labels,
        [
            ("created", [("created", SERIES_COLOURS[0], [b.created for b in buckets])]),
            (
                "finished",
                [
                    ("succeeded", STATUS_COLOURS["succeeded"], [b.succeeded for b in buckets]),
                    ("failed", STATUS_COLOURS["failed"], [b.failed for b in buckets]),
                    ("canceled", STATUS_COLOURS["canceled"], [b.canceled for b in buckets]),
                ],
            ),
        ],
        label_every=every,
    )
    queue = line_chart(
        labels,
        "waiting at the end of the " + ("day" if by_day else "hour"),
        [b.queued for b in buckets],
        label_every=every,
    )
    counts = hbar_chart(
        [(s.value, float(stats.counts.get(s.value, 0)), STATUS_COLOURS[s]) for s in JobStatus]
    )
    timings = hbar_chart(
        [
            ("wait p50", stats.queue_seconds.p50, "#8fb3ef"),
            ("wait p95", stats.queue_seconds.p95, "#2f6fdb"),
            ("run p50", stats.run_seconds.p50, "#8fd3ab"),
            ("run p95", stats.run_seconds.p95, "#1f9d55"),
        ],
        unit="s",
    )
    return {"throughput": throughput, "queue": queue, "counts": counts, "timings": timings}
