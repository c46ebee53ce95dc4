"""Charts as inline SVG, rendered on the server (pure): readable without script, nothing
loaded from anywhere. Presentation attributes and classes only (the CSP forbids inline
styles). Every text is escaped."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal
from html import escape
from zoneinfo import ZoneInfo

from clinic.web.stats import Bucket, Point

W, H = 720, 200
PAD_L, PAD_R, PAD_T, PAD_B = 44, 10, 10, 24


def _x(t: dt.datetime, t0: dt.datetime, t1: dt.datetime) -> float:
    span = max((t1 - t0).total_seconds(), 1.0)
    return PAD_L + (W - PAD_L - PAD_R) * (t - t0).total_seconds() / span


def _y(v: Decimal | float, lo: float, hi: float) -> float:
    return PAD_T + (H - PAD_T - PAD_B) * (1 - (float(v) - lo) / max(hi - lo, 1e-9))


def _frame(title: str, t0: dt.datetime, t1: dt.datetime, lo: float, hi: float, tz: ZoneInfo,
           y_ticks: Sequence[float], y_label: str, kind: str) -> list[str]:
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart chart-{escape(kind)}" '
           f'viewBox="0 0 {W} {H}" role="img" aria-label="{escape(title)}">',
           f"<title>{escape(title)}</title>"]
    for v in y_ticks:
        y = _y(v, lo, hi)
        out.append(f'<line class="grid" x1="{PAD_L}" x2="{W - PAD_R}" y1="{y:.1f}" '
                   f'y2="{y:.1f}" stroke="#ccc" stroke-width="0.5"/>')
        out.append(f'<text class="tick" x="{PAD_L - 4}" y="{y + 4:.1f}" text-anchor="end" '
                   f'font-size="10">{escape(f"{v:g}")}</text>')
    span = t1 - t0
    n = 6
    fmt = "%H:%M" if span <= dt.timedelta(days=1) else "%d %b"
    for i in range(n + 1):
        t = t0 + span * i / n
        x = _x(t, t0, t1)
        out.append(f'<text class="tick" x="{x:.1f}" y="{H - 6}" text-anchor="middle" '
                   f'font-size="10">{escape(t.astimezone(tz).strftime(fmt))}</text>')
    out.append(f'<text class="unit" x="4" y="{PAD_T + 8}" font-size="10">'
               f"{escape(y_label)}</text>")
    return out


def hr_chart(buckets: Sequence[Bucket], t0: dt.datetime, t1: dt.datetime, tz: ZoneInfo,
             title: str) -> str:
    """Heart rate: mean line with a min–max band per bucket; a lone bucket (no line to draw
    through it) is a dot on a min–max bar."""
    lo, hi = 30.0, 180.0
    if buckets:
        lo = min(lo, float(min(b.low for b in buckets)) - 5)
        hi = max(hi, float(max(b.high for b in buckets)) + 5)
    out = _frame(title, t0, t1, lo, hi, tz, [40, 60, 100, 130, 160], "bpm", "hr")
    if len(buckets) == 1:
        b = buckets[0]
        x = _x(b.start, t0, t1)
        out.append(f'<line class="hr-range" x1="{x:.1f}" x2="{x:.1f}" '
                   f'y1="{_y(b.high, lo, hi):.1f}" y2="{_y(b.low, lo, hi):.1f}" '
                   'stroke="#f4c7c3" stroke-width="4"/>')
        out.append(f'<circle class="hr-mean" cx="{x:.1f}" cy="{_y(b.mean, lo, hi):.1f}" r="3" '
                   'fill="#c0392b"/>')
    elif buckets:
        upper = " ".join(f"{_x(b.start, t0, t1):.1f},{_y(b.high, lo, hi):.1f}" for b in buckets)
        lower = " ".join(f"{_x(b.start, t0, t1):.1f},{_y(b.low, lo, hi):.1f}"
                         for b in reversed(buckets))
        out.append(f'<polygon class="hr-range" points="{upper} {lower}" fill="#f4c7c3" '
                   'stroke="none"/>')
        line = " ".join(f"{_x(b.start, t0, t1):.1f},{_y(b.mean, lo, hi):.1f}" for b in buckets)
        out.append(f'<polyline class="hr-mean" points="{line}" fill="none" stroke="#c0392b" '
                   'stroke-width="1.5"/>')
    else:
        out.append(f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle">no data</text>')
    out.append("</svg>")
    return "".join(out)


def glucose_chart(points: Sequence[Point], t0: dt.datetime, t1: dt.datetime, tz: ZoneInfo,
                  title: str, unit: str) -> str:
    """Glucose readings as dots over the 70–180 mg/dL target band; axis in the user's unit."""
    factor = 18.016 if unit == "mmol/L" else 1.0
    lo, hi = 0.0, 400.0
    vals = [p for p in points if p.value is not None]
    if vals:
        hi = max(hi, float(max(p.value for p in vals if p.value is not None)) + 20)
    ticks_mg = [54, 70, 180, 250]
    out = _frame(title, t0, t1, lo, hi, tz, ticks_mg, unit, "glucose")
    # tick labels in the user's unit
    if factor != 1.0:
        out = _relabel(out, ticks_mg, factor)
    y_top, y_bot = _y(180, lo, hi), _y(70, lo, hi)
    out.insert(2, f'<rect class="target" x="{PAD_L}" y="{y_top:.1f}" '
                  f'width="{W - PAD_L - PAD_R}" height="{y_bot - y_top:.1f}" fill="#e3f2e1"/>')
    for p in vals:
        assert p.value is not None
        v = p.value
        colour = "#b03a2e" if v < 70 else "#d68910" if v > 180 else "#1e8449"
        out.append(f'<circle class="reading" cx="{_x(p.at, t0, t1):.1f}" '
                   f'cy="{_y(v, lo, hi):.1f}" r="3" fill="{colour}"/>')
    if not vals:
        out.append(f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle">no data</text>')
    out.append("</svg>")
    return "".join(out)


def _relabel(parts: list[str], ticks: Sequence[float], factor: float) -> list[str]:
    out = []
    for s in parts:
        for m in ticks:
            s = s.replace(f">{m:g}</text>", f">{m / factor:.1f}</text>")
        out.append(s)
    return out
