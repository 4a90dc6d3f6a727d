"""Charts as SVG drawn on the server from rollup buckets: the mean of each bucket as a line over its
min–max band (a dot on the latest), and the metric's good/fair limits as dashed lines. No script,
no library."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from markupsafe import Markup, escape

from fleet.models import Rollup
from fleet.rollups import RESOLUTIONS, bucket_of
from fleet.web.levels import BANDS


@dataclass(frozen=True)
class Span:
    """A chart range: how far back, from which rollup resolution."""

    label: str
    resolution: str
    length: timedelta


SPANS = {
    s.label: s
    for s in (
        Span("6h", "1m", timedelta(hours=6)),
        Span("24h", "15m", timedelta(hours=24)),
        Span("7d", "1h", timedelta(days=7)),
        Span("30d", "1d", timedelta(days=30)),
    )
}
DEFAULT_SPAN = "24h"

WIDTH, HEIGHT, LEFT, BOTTOM = 600, 200, 64, 26  # the plot is [LEFT, WIDTH] × [4, HEIGHT - BOTTOM]


def num(value: float) -> str:
    """A reading as people read it: whole numbers from 100 up, one decimal below (live.js agrees)."""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}"


def limits(metric: str) -> list[float]:
    band = BANDS.get(metric)
    if band is None:
        return []
    return sorted({b for bounds in (band.good, band.fair) for b in bounds if b is not None})


def svg(metric: str, buckets: Sequence[Rollup], since: datetime, until: datetime) -> Markup:
    """The chart of `buckets` (one metric, oldest first) over [since, until]."""
    label = f"{metric} from {since:%Y-%m-%d %H:%M} to {until:%Y-%m-%d %H:%M} UTC"
    head = (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(label)}" '
        f'data-points="{len(buckets)}">'
    )
    if not buckets:
        middle = f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">no data in this range</text>'
        return Markup(head + middle + "</svg>")
    low = min(b.min for b in buckets)
    high = max(b.max for b in buckets)
    lines = [v for v in limits(metric) if low <= v <= high]
    pad = (high - low) * 0.05 or 1.0
    low, high = low - pad, high + pad
    t0, seconds = since.timestamp(), max((until - since).total_seconds(), 1.0)
    top, plot_h, plot_w = 4, HEIGHT - BOTTOM - 4, WIDTH - LEFT

    def x(at: datetime) -> float:
        return LEFT + plot_w * min(max((at.timestamp() - t0) / seconds, 0.0), 1.0)

    def y(value: float) -> float:
        return top + plot_h * (high - value) / (high - low)

    def path(points: list[tuple[float, float]]) -> str:
        return " ".join(f"{px:.1f},{py:.1f}" for px, py in points)

    mean = [(x(b.bucket), y(b.sum / b.count)) for b in buckets]
    band = [(x(b.bucket), y(b.max)) for b in buckets] + [(x(b.bucket), y(b.min)) for b in reversed(buckets)]
    parts = [
        head,
        f'<polygon class="band" points="{path(band)}"/>',
        *(
            f'<line class="limit" x1="{LEFT}" x2="{WIDTH}" y1="{y(v):.1f}" y2="{y(v):.1f}"/>'
            f'<text class="tick" x="{WIDTH - 2}" y="{y(v) - 3:.1f}" text-anchor="end">{num(v)}</text>'
            for v in lines
        ),
        f'<polyline class="mean" points="{path(mean)}"/>',
        f'<circle class="now" cx="{mean[-1][0]:.1f}" cy="{mean[-1][1]:.1f}" r="3"/>',
        f'<text class="tick" x="{LEFT - 4}" y="{top + 16}" text-anchor="end">{num(high)}</text>',
        f'<text class="tick" x="{LEFT - 4}" y="{top + plot_h}" text-anchor="end">{num(low)}</text>',
        f'<text class="tick" x="{LEFT}" y="{HEIGHT - 4}">{since:%d/%m %H:%M}</text>',
        f'<text class="tick" x="{WIDTH}" y="{HEIGHT - 4}" text-anchor="end">{until:%d/%m %H:%M}</text>',
        "</svg>",
    ]
    return Markup("".join(parts))


def bucketed(points: Iterable[tuple[datetime, float | None]], name: str, resolution: str) -> list[Rollup]:
    """Samples that are not readings (e.g. health vitals) folded into rollup-like buckets for `svg`,
    oldest first; missing values (None) are left out."""
    seconds = RESOLUTIONS[resolution]
    acc: dict[datetime, list] = {}  # bucket → [count, sum, min, max, last, last_ts]
    for at, value in points:
        if value is None:
            continue
        start = bucket_of(at, seconds)
        a = acc.get(start)
        if a is None:
            acc[start] = [1, value, value, value, value, at]
        else:
            a[:] = a[0] + 1, a[1] + value, min(a[2], value), max(a[3], value), value, at
    return [
        Rollup(
            device_id="",
            name=name,
            resolution=resolution,
            bucket=start,
            count=a[0],
            sum=a[1],
            min=a[2],
            max=a[3],
            last=a[4],
            last_ts=a[5],
        )
        for start, a in sorted(acc.items())
    ]
