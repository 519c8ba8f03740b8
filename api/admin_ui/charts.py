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
    series: Sequence[tuple[str, Sequence[int]]],
    *,
    width: int = 1080,
    height: int = 260,
    label_every: int = 3,
) -> Markup:
    """Grouped vertical bars: one group per label, one bar per series, a legend on top."""
    left, right, top, bottom = 36, 8, 24, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = _nice_max(max((v for _, values in series for v in values), default=0))
    n = max(len(labels), 1)
    group_w = plot_w / n
    bar_w = max(1.0, (group_w - 2) / max(len(series), 1))
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'xmlns="http://www.w3.org/2000/svg">'
    ]
    for fraction in (0, 0.5, 1):
        y = top + plot_h * (1 - fraction)
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="{AXIS}" '
            f'stroke-width="{1 if fraction == 0 else 0.5}"/>'
            f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="10" '
            f'fill="{TEXT}">{_num(peak * fraction)}</text>'
        )
    for s, (name, values) in enumerate(series):
        colour = SERIES_COLOURS[s % len(SERIES_COLOURS)]
        parts.append(
            f'<rect x="{left + s * 90}" y="6" width="10" height="10" rx="2" fill="{colour}"/>'
            f'<text x="{left + s * 90 + 14}" y="15" font-size="11" fill="{TEXT}">'
            f"{escape(name)}</text>"
        )
        for i, value in enumerate(values):
            h = plot_h * value / peak
            x = left + i * group_w + 1 + s * bar_w
            parts.append(
                f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w:.1f}" '
                f'height="{h:.1f}" fill="{colour}"><title>{escape(labels[i])} '
                f"{escape(name)}: {value}</title></rect>"
            )
    for i, label in enumerate(labels):
        if i % label_every == 0 or i == len(labels) - 1:
            x = left + (i + 0.5) * group_w
            parts.append(
                f'<text x="{x:.1f}" y="{height - 10}" text-anchor="middle" font-size="10" '
                f'fill="{TEXT}">{escape(label)}</text>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))


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
    """The stats page's charts: ``throughput`` per hour, ``counts`` by status, ``timings``."""
    per_hour = stats.per_hour
    labels = [b.hour_start.strftime("%H:00" if stats.hours <= 48 else "%m-%d %H") for b in per_hour]
    throughput = bar_chart(
        labels,
        [("created", [b.created for b in per_hour]), ("finished", [b.finished for b in per_hour])],
        label_every=max(1, len(per_hour) // 8),
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
    return {"throughput": throughput, "counts": counts, "timings": timings}
