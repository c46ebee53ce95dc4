"""The alert rules (pure): values and times in, decisions out. No I/O, no clock.

- Glucose is a band per reading: ``glucose_urgent_low`` (< urgent low), ``glucose_low``
  (< low), ``glucose_high`` (> high), or none (in range). At most one glucose alert is open:
  the band of the latest reading; a reading in another band resolves it (and opens its own).
  A meter's out-of-range special values count: +INF is above any threshold, -INF below.
- Heart rate is a small state machine (:class:`HrState`): ``sustain`` consecutive samples
  below low (or above high) raise the alarm, ``sustain`` consecutive samples in range clear it.
  A single glitching sample does neither.
- ``stale``: no reading for ``stale_after_s``; ``hub_offline``: the hub has said offline (its
  Last Will) for ``hub_offline_after_s``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from enum import StrEnum
from typing import Any, Literal

from clinic.config import AlertsSection

#: mg/dL per mmol/L for glucose (the factor clinicians use)
MG_DL_PER_MMOL_L = Decimal("18.016")


class Kind(StrEnum):
    GLUCOSE_URGENT_LOW = "glucose_urgent_low"
    GLUCOSE_LOW = "glucose_low"
    GLUCOSE_HIGH = "glucose_high"
    HEART_RATE_LOW = "heart_rate_low"
    HEART_RATE_HIGH = "heart_rate_high"
    STALE = "stale"
    HUB_OFFLINE = "hub_offline"


GLUCOSE_KINDS = frozenset({Kind.GLUCOSE_URGENT_LOW, Kind.GLUCOSE_LOW, Kind.GLUCOSE_HIGH})
HEART_RATE_KINDS = frozenset({Kind.HEART_RATE_LOW, Kind.HEART_RATE_HIGH})

Side = Literal["low", "high"]

#: per-patient override columns (the table ``alert_thresholds``) = Thresholds fields
OVERRIDABLE = ("glucose_urgent_low_mg_dl", "glucose_low_mg_dl", "glucose_high_mg_dl",
               "heart_rate_low_bpm", "heart_rate_high_bpm", "heart_rate_sustain_samples",
               "stale_after_s")


@dataclass(frozen=True)
class Thresholds:
    glucose_urgent_low_mg_dl: Decimal = Decimal(54)
    glucose_low_mg_dl: Decimal = Decimal(70)
    glucose_high_mg_dl: Decimal = Decimal(250)
    heart_rate_low_bpm: Decimal = Decimal(40)
    heart_rate_high_bpm: Decimal = Decimal(130)
    heart_rate_sustain_samples: int = 10
    stale_after_s: float = 3600.0

    @classmethod
    def from_config(cls, cfg: AlertsSection) -> Thresholds:
        return cls(
            Decimal(str(cfg.glucose_urgent_low_mg_dl)), Decimal(str(cfg.glucose_low_mg_dl)),
            Decimal(str(cfg.glucose_high_mg_dl)), Decimal(str(cfg.heart_rate_low_bpm)),
            Decimal(str(cfg.heart_rate_high_bpm)), cfg.heart_rate_sustain_samples,
            float(cfg.stale_after_s))

    def overridden(self, overrides: Mapping[str, Any]) -> Thresholds:
        """These defaults with a patient's non-null overrides (unknown names ignored)."""
        changes: dict[str, Any] = {}
        for name, v in overrides.items():
            if v is None or name not in OVERRIDABLE:
                continue
            if name == "heart_rate_sustain_samples":
                changes[name] = int(v)
            elif name == "stale_after_s":
                changes[name] = float(v)
            else:
                changes[name] = Decimal(str(v))
        return replace(self, **changes)

    def problems(self) -> list[str]:
        """What makes these thresholds unusable (empty when they are fine)."""
        out = []
        if not (Decimal(0) < self.glucose_urgent_low_mg_dl < self.glucose_low_mg_dl
                < self.glucose_high_mg_dl):
            out.append("glucose thresholds must be 0 < urgent low < low < high")
        if not Decimal(0) < self.heart_rate_low_bpm < self.heart_rate_high_bpm:
            out.append("heart-rate thresholds must be 0 < low < high")
        if self.heart_rate_sustain_samples < 1:
            out.append("heart-rate sustain must be at least 1 sample")
        if self.stale_after_s < 60:
            out.append("stale-after must be at least 60 seconds")
        return out


# --- glucose ------------------------------------------------------------------------------------


def glucose_mg_dl(value: Decimal | None, unit: str | None,
                  absent: str | None = None) -> Decimal | None:
    """A glucose value in mg/dL, or None when there is nothing to judge (unknown unit, NaN,
    error). A meter's HI (+INF) and LO (-INF) become +/- infinity: beyond every threshold."""
    if value is None:
        return {"positive-infinity": Decimal("Infinity"),
                "negative-infinity": Decimal("-Infinity")}.get(absent or "")
    if unit == "mg/dL":
        return value
    if unit == "mmol/L":
        return value * MG_DL_PER_MMOL_L
    return None  # never guess a unit


def glucose_band(mg_dl: Decimal, th: Thresholds) -> Kind | None:
    """The alert a glucose reading calls for (the most severe band), or None in range."""
    if mg_dl < th.glucose_urgent_low_mg_dl:
        return Kind.GLUCOSE_URGENT_LOW
    if mg_dl < th.glucose_low_mg_dl:
        return Kind.GLUCOSE_LOW
    if mg_dl > th.glucose_high_mg_dl:
        return Kind.GLUCOSE_HIGH
    return None


# --- heart rate ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class HrState:
    """Where a patient's heart-rate alarm stands after the samples seen so far."""

    #: the side of the current out-of-range run, its length, and the in-range run's length
    side: Side | None = None
    run: int = 0
    ok_run: int = 0
    #: the raised alarm
    alarm: Side | None = None


def hr_side(bpm: Decimal, th: Thresholds) -> Side | None:
    if bpm < th.heart_rate_low_bpm:
        return "low"
    if bpm > th.heart_rate_high_bpm:
        return "high"
    return None


def step_hr(s: HrState, bpm: Decimal, th: Thresholds) -> HrState:
    """The state after one more sample (in time order)."""
    n = th.heart_rate_sustain_samples
    side = hr_side(bpm, th)
    if side is None:
        ok = s.ok_run + 1
        return HrState(None, 0, ok, None if ok >= n else s.alarm)
    run = s.run + 1 if s.side == side else 1
    return HrState(side, run, 0, side if run >= n else s.alarm)


def hr_kind(alarm: Side | None) -> Kind | None:
    return {"low": Kind.HEART_RATE_LOW, "high": Kind.HEART_RATE_HIGH}.get(alarm or "")


def hr_alarm_of(open_kinds: Collection[Kind]) -> Side | None:
    """The raised heart-rate alarm, read from the patient's unresolved alerts."""
    if Kind.HEART_RATE_LOW in open_kinds:
        return "low"
    if Kind.HEART_RATE_HIGH in open_kinds:
        return "high"
    return None


# --- time-based ---------------------------------------------------------------------------------


def is_stale(last_reading_at: dt.datetime, now: dt.datetime, th: Thresholds) -> bool:
    """No reading for ``stale_after_s`` (a future time counts as now)."""
    return (now - min(last_reading_at, now)).total_seconds() >= th.stale_after_s


def hub_offline_due(online: bool | None, offline_since: dt.datetime | None, revoked: bool,
                    now: dt.datetime, after_s: float) -> bool:
    """The hub said offline ``after_s`` ago or more (unknown, online or revoked: no)."""
    if revoked or online is not False or offline_since is None:
        return False
    return (now - offline_since).total_seconds() >= after_s


# --- transitions --------------------------------------------------------------------------------

Action = Literal["open", "resolve"]


def transitions(before: Kind | None, after: Kind | None) -> list[tuple[Action, Kind]]:
    """What moves a family (glucose, heart rate) from ``before`` to ``after``: resolve the
    old alert first, then open the new one."""
    if before == after:
        return []
    out: list[tuple[Action, Kind]] = []
    if before is not None:
        out.append(("resolve", before))
    if after is not None:
        out.append(("open", after))
    return out


def switch(want: bool, is_open: bool, kind: Kind) -> list[tuple[Action, Kind]]:
    """Open or resolve a single-kind condition (stale, hub offline)."""
    return transitions(kind if is_open else None, kind if want else None)
