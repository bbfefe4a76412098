"""Charts as inline SVG, drawn on the server: no JavaScript library, no CDN, works offline.

Each function returns a complete ``<svg>`` string (markupsafe ``Markup``) that scales to its container
(viewBox) and carries a <title> and per-mark <title>s for screen readers and hover tooltips."""

from __future__ import annotations

import math
from html import escape
from typing import Callable, Sequence

from markupsafe import Markup

Fmt = Callable[[float], str]
PALETTE = ("#3566d6", "#e08a2e", "#2f9e6b", "#c2455a", "#7a5bd1", "#1d9bb2", "#8c8c3a", "#d1589f")


def _plain(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 10 or v == int(v) else f"{v:,.2f}"


def _nice_max(v: float) -> float:
    """A round axis maximum >= v (1, 2, 2.5, 5 × 10^k)."""
    if v <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * exp:
            return m * exp
    return 10 * exp


def _svg(width: int, height: int, title: str, body: list[str]) -> Markup:
    t = escape(title)
    return Markup(
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{t}" '
        f'xmlns="http://www.w3.org/2000/svg" preserveAspectRatio="xMidYMid meet"><title>{t}</title>'
        + "".join(body)
        + "</svg>"
    )


def empty(title: str, message: str = "No data yet") -> Markup:
    return _svg(600, 120, title, [f'<text x="300" y="65" text-anchor="middle" class="c-empty">{escape(message)}</text>'])


def hbar(items: Sequence[tuple[str, float]], title: str, fmt: Fmt = _plain, colors: dict[str, str] | None = None) -> Markup:
    """Horizontal bars, one per (label, value), longest first as given."""
    items = [(str(k), float(v)) for k, v in items][:12]
    if not items or max(v for _, v in items) <= 0:
        return empty(title)
    row, label_w, width = 30, 170, 600
    top = _nice_max(max(v for _, v in items))
    plot = width - label_w - 90
    body = []
    for i, (label, v) in enumerate(items):
        y = 8 + i * row
        w = max(1.0, plot * v / top) if v > 0 else 0
        color = (colors or {}).get(label, PALETTE[i % len(PALETTE)])
        short = label if len(label) <= 24 else label[:22] + "…"
        body.append(f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end" class="c-label">{escape(short)}</text>')
        body.append(
            f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 10}" rx="3" fill="{color}">'
            f"<title>{escape(label)}: {escape(fmt(v))}</title></rect>"
        )
        body.append(f'<text x="{label_w + w + 6:.1f}" y="{y + 15}" class="c-value">{escape(fmt(v))}</text>')
    return _svg(width, 16 + len(items) * row, title, body)


def grouped(categories: Sequence[str], series: dict[str, Sequence[float]], title: str, fmt: Fmt = _plain) -> Markup:
    """Vertical bars: for each category, one bar per series (e.g. estimated vs actual)."""
    categories = list(categories)[:10]
    names = list(series)
    values = [[float(series[n][i]) for n in names] for i in range(len(categories))]
    peak = max((v for vs in values for v in vs), default=0)
    if not categories or peak <= 0:
        return empty(title)
    width, height, left, bottom, top_pad = 600, 260, 64, 52, 28
    top = _nice_max(peak)
    plot_w, plot_h = width - left - 12, height - bottom - top_pad
    group_w = plot_w / len(categories)
    bar_w = min(34.0, (group_w - 12) / len(names))
    body = []
    for k in range(5):  # grid and axis labels
        v = top * k / 4
        y = top_pad + plot_h - plot_h * k / 4
        body.append(f'<line x1="{left}" x2="{width - 12}" y1="{y:.1f}" y2="{y:.1f}" class="c-grid"/>')
        body.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="c-axis">{escape(fmt(v))}</text>')
    for i, cat in enumerate(categories):
        x0 = left + i * group_w + (group_w - bar_w * len(names)) / 2
        for j, name in enumerate(names):
            v = values[i][j]
            h = plot_h * v / top
            x = x0 + j * bar_w
            body.append(
                f'<rect x="{x:.1f}" y="{top_pad + plot_h - h:.1f}" width="{bar_w - 3:.1f}" height="{h:.1f}" rx="2" '
                f'fill="{PALETTE[j % len(PALETTE)]}"><title>{escape(cat)} · {escape(name)}: {escape(fmt(v))}</title></rect>'
            )
        short = cat if len(cat) <= 16 else cat[:14] + "…"
        body.append(f'<text x="{left + (i + 0.5) * group_w:.1f}" y="{height - bottom + 18}" text-anchor="middle" class="c-label">{escape(short)}</text>')
    lx = left
    for j, name in enumerate(names):  # legend
        body.append(f'<rect x="{lx}" y="6" width="12" height="12" rx="2" fill="{PALETTE[j % len(PALETTE)]}"/>')
        body.append(f'<text x="{lx + 17}" y="16" class="c-label">{escape(name)}</text>')
        lx += 30 + 8 * len(name)
    return _svg(width, height, title, body)


def line(points: Sequence[tuple[str, float]], title: str, fmt: Fmt = _plain) -> Markup:
    """A filled line over ordered (label, value) points, e.g. spend per day."""
    points = [(str(k), float(v)) for k, v in points]
    if not points or max(v for _, v in points) <= 0:
        return empty(title)
    width, height, left, bottom, top_pad = 600, 240, 70, 40, 16
    top = _nice_max(max(v for _, v in points))
    plot_w, plot_h = width - left - 16, height - bottom - top_pad
    n = len(points)

    def xy(i: int, v: float) -> tuple[float, float]:
        x = left + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)
        return x, top_pad + plot_h - plot_h * v / top

    body = []
    for k in range(5):
        v = top * k / 4
        y = top_pad + plot_h - plot_h * k / 4
        body.append(f'<line x1="{left}" x2="{width - 16}" y1="{y:.1f}" y2="{y:.1f}" class="c-grid"/>')
        body.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="c-axis">{escape(fmt(v))}</text>')
    coords = [xy(i, v) for i, (_, v) in enumerate(points)]
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
    base = top_pad + plot_h
    body.append(f'<polygon points="{coords[0][0]:.1f},{base} {path} {coords[-1][0]:.1f},{base}" class="c-area"/>')
    body.append(f'<polyline points="{path}" class="c-line"/>')
    for (x, y), (label, v) in zip(coords, points):
        body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" class="c-dot"><title>{escape(label)}: {escape(fmt(v))}</title></circle>')
    step = max(1, math.ceil(n / 6))
    for i in range(0, n, step):
        x, _ = coords[i]
        body.append(f'<text x="{x:.1f}" y="{height - 14}" text-anchor="middle" class="c-axis">{escape(points[i][0])}</text>')
    return _svg(width, height, title, body)


def histogram(values: Sequence[float], edges: Sequence[float], title: str, edge_fmt: Fmt = _plain) -> Markup:
    """Counts of values in [edges[i], edges[i+1]); the last bucket is open-ended."""
    if not values:
        return empty(title)
    counts = [0] * len(edges)
    for v in values:
        i = max(k for k, e in enumerate(edges) if v >= e) if v >= edges[0] else 0
        counts[i] += 1
    labels = [f"{edge_fmt(edges[i])}–{edge_fmt(edges[i + 1])}" for i in range(len(edges) - 1)] + [f"≥ {edge_fmt(edges[-1])}"]
    return grouped(labels, {"requests": counts}, title)
