"""Plausibility: values a device cannot physically report, records that are not patient data,
and measurement times outside a plausible window.

Pure. :func:`check` and :func:`check_time` (given the hub's now) raise
:class:`edge.errors.Implausible` with a stable ``reason``; the caller counts the refusal under
that reason (never drops silently). Messages never carry the value or time itself, so they are
safe to log and to show.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from edge.errors import Implausible
from edge.readings import GlucoseReading, HeartRateReading, TimeSource

HEART_RATE_MIN_BPM = 20
HEART_RATE_MAX_BPM = 300
#: 10-600 mg/dL (0.6-33.3 mmol/L); compared on the mg/dL value
GLUCOSE_MIN_MG_DL = Decimal(10)
GLUCOSE_MAX_MG_DL = Decimal(600)

# kg/L -> mg/dL is x 10^5; mol/L -> mg/dL goes through the glucose molar mass (180.156 g/mol).
_KG_L_TO_MG_DL_EXP = 5
_MOL_L_TO_MG_DL = Decimal("18015.6")

REASON_MALFORMED = "malformed"
REASON_HEART_RATE = "heart_rate_out_of_range"
REASON_GLUCOSE = "glucose_out_of_range"
REASON_CONTROL = "control_solution"
REASON_NO_CONSENT = "no_consent"
REASON_VAULT_FULL_COUNT = "vault_full_count"
REASON_VAULT_FULL_BYTES = "vault_full_bytes"
REASON_DISK_FULL = "disk_full"
REASON_UNKNOWN_DEVICE = "unknown_device"
REASON_TIME = "implausible_time"
REASON_RATE_LIMITED = "rate_limited"
#: held while the hub clock was unsynchronised, in a boot that ended before it synchronised:
#: the time can never be known (see :mod:`edge.intake.timing`)
REASON_UNKNOWN_TIME = "unknown_time"

#: every reason under which a reading is refused anywhere, in display order; status displays
#: show each of them (with 0) so their shape never changes
REFUSAL_REASONS: tuple[str, ...] = (
    REASON_MALFORMED,
    REASON_HEART_RATE,
    REASON_GLUCOSE,
    REASON_CONTROL,
    REASON_NO_CONSENT,
    REASON_VAULT_FULL_COUNT,
    REASON_VAULT_FULL_BYTES,
    REASON_DISK_FULL,
    REASON_UNKNOWN_DEVICE,
    REASON_TIME,
    REASON_RATE_LIMITED,
    REASON_UNKNOWN_TIME,
)

#: meter status bits meaning "the real value is beyond what I can measure" (HI / LO)
OUT_OF_RANGE_STATUS = frozenset({"result_too_high", "result_too_low"})

_CONTROL = "control_solution"


def is_control_solution(reading: GlucoseReading) -> bool:
    """True for a control-solution test: a meter check, not patient data."""
    return reading.sample_type == _CONTROL or reading.sample_location == _CONTROL


def glucose_mg_dl(reading: GlucoseReading) -> Decimal | None:
    """The concentration in mg/dL (None for a special value such as NaN / NRes)."""
    if reading.mg_dl is not None:
        return reading.mg_dl
    c = reading.concentration
    if c is None:
        return None
    if reading.unit == "mol/L":
        return c * _MOL_L_TO_MG_DL
    return c.scaleb(_KG_L_TO_MG_DL_EXP)


def check(reading: HeartRateReading | GlucoseReading) -> None:
    """Raise :class:`Implausible` if ``reading`` must not be forwarded as patient data."""
    if isinstance(reading, HeartRateReading):
        if not HEART_RATE_MIN_BPM <= reading.bpm <= HEART_RATE_MAX_BPM:
            raise Implausible(
                REASON_HEART_RATE,
                f"heart rate outside {HEART_RATE_MIN_BPM}-{HEART_RATE_MAX_BPM} bpm",
            )
        return
    if is_control_solution(reading):
        raise Implausible(REASON_CONTROL, "control-solution record, not patient data")
    if OUT_OF_RANGE_STATUS.intersection(reading.status):
        # HI / LO: the meter says the true value lies beyond its range; a real reading.
        return
    mg_dl = glucose_mg_dl(reading)
    if mg_dl is None or mg_dl.is_nan():
        # NaN / NRes: forwarded with a dataAbsentReason, never as a number.
        return
    # An infinite value fails the comparison below, as it should.
    if not GLUCOSE_MIN_MG_DL <= mg_dl <= GLUCOSE_MAX_MG_DL:
        raise Implausible(REASON_GLUCOSE, "glucose outside 10-600 mg/dL without a HI/LO status")


# --- when a measurement can have been taken ---------------------------------------------------


@dataclass(frozen=True)
class TimeWindow:
    """Measurement times a device may plausibly report: not before ``earliest`` (UTC) and not
    more than ``max_future`` after the hub's now."""

    earliest: datetime = datetime(2000, 1, 1, tzinfo=UTC)
    max_future: timedelta = timedelta(days=1)

    def __post_init__(self) -> None:
        if self.earliest.tzinfo is None or self.earliest.utcoffset() is None:
            raise ValueError("the window's earliest time must be timezone-aware")
        if self.max_future < timedelta(0):
            raise ValueError("max_future must not be negative")

    @classmethod
    def from_settings(cls, earliest_year: int, max_future_s: float) -> TimeWindow:
        """The window from ``[intake]``'s ``earliest_measurement_year`` and ``max_future_s``."""
        return cls(datetime(earliest_year, 1, 1, tzinfo=UTC), timedelta(seconds=max_future_s))

    def latest(self, now: datetime) -> datetime:
        """The latest plausible time given the hub's ``now`` (saturating at year 9999)."""
        try:
            return now + self.max_future
        except OverflowError:
            return datetime.max.replace(tzinfo=UTC)


def check_time(reading: HeartRateReading | GlucoseReading, now: datetime | None,
               window: TimeWindow) -> None:
    """Raise :class:`Implausible` (``implausible_time``) if a time the *device* reported
    puts the measurement outside ``window`` around the hub's ``now``.

    Readings timed by the gateway's own receipt (heart-rate straps send no time) are not
    judged here: their time never comes from the device. ``now`` None: the hub clock is not
    synchronised, so only the earliest bound applies (a hub booted from an old saved time
    must not refuse a meter's correct record as "in the future"). The message carries no
    time.
    """
    if reading.time_source is TimeSource.GATEWAY:
        return
    when = reading.effective_time
    if when < window.earliest:
        raise Implausible(REASON_TIME, "measurement time before the plausible window")
    if now is not None and when > window.latest(now):
        raise Implausible(REASON_TIME, "measurement time after the plausible window")
