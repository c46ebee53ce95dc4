"""What the pages compute from readings (pure): glucose bands as shares of readings, means,
readings per day, heart-rate buckets, units, flags and "how long ago"."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

MGDL_PER_MMOLL = Decimal("18.016")
#: (label, lower bound inclusive, upper bound exclusive) in mg/dL — ADA / consensus levels
BANDS: tuple[tuple[str, Decimal, Decimal | None], ...] = (
    ("very low", Decimal(0), Decimal(54)),
    ("low", Decimal(54), Decimal(70)),
    ("in range", Decimal(70), Decimal(181)),
    ("high", Decimal(181), Decimal(251)),
    ("very high", Decimal(251), None),
)
BAND_LABELS = {"very low": "<54", "low": "54–69", "in range": "70–180", "high": "181–250",
               "very high": ">250"}
HR_LOW, HR_HIGH = 40, 130


@dataclass(frozen=True)
class Point:
    """One reading as the pages use it: glucose always in mg/dL, heart rate in bpm."""

    at: dt.datetime
    value: Decimal | None
    meal: str | None = None


@dataclass(frozen=True)
class Bucket:
    start: dt.datetime
    low: Decimal
    mean: Decimal
    high: Decimal
    n: int


def to_mgdl(value: Decimal, unit: str | None) -> Decimal:
    return value * MGDL_PER_MMOLL if unit in ("mmol/L", "mmol/l") else value


def glucose_text(mgdl: Decimal | None, unit: str) -> str:
    """A glucose value in the user's unit: whole mg/dL or mmol/L to one decimal."""
    if mgdl is None:
        return "—"
    if unit == "mmol/L":
        return str((mgdl / MGDL_PER_MMOLL).quantize(Decimal("0.1"), ROUND_HALF_UP))
    return str(mgdl.quantize(Decimal(1), ROUND_HALF_UP))


def band_of(mgdl: Decimal) -> str:
    for label, lo, hi in BANDS:
        if mgdl >= lo and (hi is None or mgdl < hi):
            return label
    return BANDS[0][0]  # negative values do not occur; count them as very low


def bands(points: Sequence[Point]) -> dict[str, Decimal]:
    """Share of readings per band, in percent to one decimal (0 for every band when none)."""
    vals = [p.value for p in points if p.value is not None]
    counts = dict.fromkeys((b[0] for b in BANDS), 0)
    for v in vals:
        counts[band_of(v)] += 1
    n = len(vals)
    return {k: (Decimal(100 * c) / n).quantize(Decimal("0.1"), ROUND_HALF_UP) if n
            else Decimal(0) for k, c in counts.items()}


def mean(points: Sequence[Point]) -> Decimal | None:
    vals = [p.value for p in points if p.value is not None]
    return sum(vals, Decimal(0)) / len(vals) if vals else None


def per_day(points: Sequence[Point], days: int) -> Decimal:
    return (Decimal(sum(1 for p in points if p.value is not None)) / days).quantize(
        Decimal("0.1"), ROUND_HALF_UP)


def glucose_flag(mgdl: Decimal | None) -> str:
    if mgdl is None:
        return ""
    return "low" if mgdl < 70 else "high" if mgdl > 180 else ""


def hr_flag(bpm: Decimal | None) -> str:
    if bpm is None:
        return ""
    return "low" if bpm < HR_LOW else "high" if bpm > HR_HIGH else ""


def buckets(points: Sequence[Point], width: dt.timedelta) -> list[Bucket]:
    """Min / mean / max per ``width`` (aligned to the epoch), oldest first."""
    step = int(width.total_seconds())
    groups: dict[int, list[Decimal]] = {}
    for p in points:
        if p.value is not None:
            groups.setdefault(int(p.at.timestamp()) // step * step, []).append(p.value)
    return [Bucket(dt.datetime.fromtimestamp(k, dt.UTC), min(v), sum(v, Decimal(0)) / len(v),
                   max(v), len(v)) for k, v in sorted(groups.items())]


def age_text(at: dt.datetime | None, now: dt.datetime) -> str:
    """``3 min ago`` style; "never" for no reading."""
    if at is None:
        return "never"
    s = max(0, int((now - at).total_seconds()))
    if s < 60:
        return f"{s} s ago"
    if s < 3600:
        return f"{s // 60} min ago"
    if s < 48 * 3600:
        return f"{s // 3600} h ago"
    return f"{s // 86400} d ago"


def is_stale(at: dt.datetime | None, now: dt.datetime, after_s: int) -> bool:
    return at is None or (now - at).total_seconds() > after_s
