"""Small server-rendered SVG charts for the compliance page: no script, no request leaves the page.

Each function takes lethe.audit.trends.Series and returns one <svg> element as text, with a <title>
on every bar or point so a hover reads the exact value. Labels are escaped.
"""

from __future__ import annotations

from html import escape

from lethe.audit.trends import Series

PALETTE = ("#0b61a4", "#d97706", "#2da44e", "#8250df", "#c62828", "#0f766e")
FONT = 'font-family="system-ui, sans-serif" font-size="10" fill="#52606d"'


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 10 or value == int(value) else f"{value:.1f}"


def sparkbars(series: Series, width: int = 240, height: int = 28, colour: str = PALETTE[0]) -> str:
    """One row of bars (one per day), scaled to the series' own maximum."""
    n = max(len(series.points), 1)
    top = max((v or 0 for _, v in series.points), default=0) or 1
    step = width / n
    bars = []
    for i, (label, value) in enumerate(series.points):
        h = 0 if not value else max(1.0, (height - 2) * value / top)
        bars.append(
            f'<rect x="{i * step:.1f}" y="{height - h:.1f}" width="{max(step - 1, 1):.1f}" height="{h:.1f}" '
            f'fill="{colour}"><title>{escape(label)}: {_fmt(value or 0)}</title></rect>'
        )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="spark" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(series.name)}">'
        f'<line x1="0" y1="{height - 0.5}" x2="{width}" y2="{height - 0.5}" stroke="#e4e7eb"/>'
        + "".join(bars)
        + "</svg>"
    )


def _frame(width: int, height: int, left: int, bottom: int, top: float, unit: str, label: str) -> list[str]:
    plot_h = height - bottom - 8
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{escape(label)}">'
    ]
    for frac in (0, 0.5, 1):
        y = 8 + plot_h * (1 - frac)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width}" y2="{y:.1f}" stroke="#eef0f3"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 3:.1f}" text-anchor="end" {FONT}>{_fmt(top * frac)}{unit}</text>')
    return parts


def _legend(series: list[Series], x: int, y: int) -> str:
    items = []
    for i, s in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        items.append(
            f'<rect x="{x + i * 130}" y="{y - 8}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{x + i * 130 + 14}" y="{y}" {FONT}>{escape(s.name)}</text>'
        )
    return "".join(items)


def stacked_bars(series: list[Series], label: str, width: int = 560, height: int = 170) -> str:
    """Bars per x label, the series stacked in order (the first at the bottom), with a legend."""
    left, bottom = 34, 34
    labels = [x for x, _ in series[0].points] if series else []
    totals = [sum((s.points[i][1] or 0) for s in series) for i in range(len(labels))]
    top = max(totals, default=0) or 1
    plot_h, n = height - bottom - 8, max(len(labels), 1)
    step = (width - left) / n
    parts = _frame(width, height, left, bottom, top, "", label)
    for i, x_label in enumerate(labels):
        base: float = 8 + plot_h
        for j, s in enumerate(series):
            value = s.points[i][1] or 0
            h = plot_h * value / top
            if h:
                parts.append(
                    f'<rect x="{left + i * step + 2:.1f}" y="{base - h:.1f}" width="{max(step - 4, 1):.1f}" '
                    f'height="{h:.1f}" fill="{PALETTE[j % len(PALETTE)]}">'
                    f"<title>week of {escape(x_label)}: {_fmt(value)} {escape(s.name)}</title></rect>"
                )
            base -= h
        if i % 2 == 0 or n <= 8:
            parts.append(
                f'<text x="{left + i * step + step / 2:.1f}" y="{height - bottom + 12}" text-anchor="middle" {FONT}>'
                f"{escape(x_label[5:])}</text>"
            )
    parts.append(_legend(series, left, height - 4))
    return "".join(parts) + "</svg>"


def lines(series: list[Series], label: str, unit: str = "", width: int = 560, height: int = 170) -> str:
    """One line per series over shared x labels, with a legend."""
    left, bottom = 40, 34
    labels = [x for x, _ in series[0].points] if series else []
    top = max((v or 0 for s in series for _, v in s.points), default=0) or 1
    plot_h, n = height - bottom - 8, max(len(labels) - 1, 1)
    step = (width - left - 6) / n
    parts = _frame(width, height, left, bottom, top, unit, label)
    for j, s in enumerate(series):
        colour = PALETTE[j % len(PALETTE)]
        coords = [(left + i * step, 8 + plot_h * (1 - (v or 0) / top)) for i, (_, v) in enumerate(s.points)]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        for (x, y), (x_label, v) in zip(coords, s.points, strict=True):
            parts.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2" fill="{colour}">'
                f"<title>{escape(s.name)}, end of {escape(x_label)}: {_fmt(v or 0)}{unit}</title></circle>"
            )
    last = len(labels) - 1
    for i, x_label in enumerate(labels):
        if (i % 7 == 0 and last - i >= 3) or i == last:  # weekly ticks, and the latest day at the right edge
            anchor = "end" if i == last and i else "middle"
            parts.append(
                f'<text x="{left + i * step:.1f}" y="{height - bottom + 12}" text-anchor="{anchor}" {FONT}>'
                f"{escape(x_label[5:])}</text>"
            )
    parts.append(_legend(series, left, height - 4))
    return "".join(parts) + "</svg>"
