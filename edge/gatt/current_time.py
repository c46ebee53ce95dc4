"""Current Time 0x2A2B: the meter's own clock (local time, no zone), read to learn its offset
from the gateway's clock and written to set it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from edge.gatt._reader import Reader, encode_date_time

CT = "current_time"


class AdjustReason(StrEnum):
    """Current Time adjust reason bits, in bit order."""

    MANUAL_TIME_UPDATE = "manual_time_update"
    EXTERNAL_REFERENCE_TIME_UPDATE = "external_reference_time_update"
    CHANGE_OF_TIME_ZONE = "change_of_time_zone"
    CHANGE_OF_DST = "change_of_dst"


@dataclass(frozen=True, slots=True)
class CurrentTime:
    """A decoded Current Time value: the device's local clock (no zone)."""

    date_time: datetime
    #: 1 = Monday … 7 = Sunday; None when the device does not know
    day_of_week: int | None
    #: 1/256 s
    fractions256: int
    adjust_reason_bits: int = 0

    @property
    def exact_time(self) -> datetime:
        """``date_time`` plus the fractions (to the nearest microsecond)."""
        return self.date_time + timedelta(microseconds=round(self.fractions256 * 1_000_000 / 256))

    @property
    def adjust_reasons(self) -> tuple[AdjustReason, ...]:
        """Named adjust reason bits (reserved bits 4-7 ignored)."""
        return tuple(a for i, a in enumerate(AdjustReason) if self.adjust_reason_bits >> i & 1)


def decode_current_time(data: bytes | bytearray | memoryview) -> CurrentTime:
    """Decode 0x2A2B: Date Time (7), Day of Week (1), Fractions256 (1), Adjust Reason (1)."""
    r = Reader(CT, data)
    dt = r.date_time("date time")
    dow = r.u8("day of week")
    fractions = r.u8("fractions256")
    reason = r.u8("adjust reason")
    r.finish()
    if dow > 7:
        raise r.malformed(f"reserved day of week {dow}")
    return CurrentTime(dt, dow or None, fractions, reason)


def encode_current_time(now_local: datetime, adjust_reason_bits: int = 0) -> bytes:
    """The 0x2A2B value for a local wall-clock time (what a gateway writes to set a clock)."""
    fractions = min(255, round(now_local.microsecond * 256 / 1_000_000))
    return encode_date_time(now_local) + bytes(
        [now_local.isoweekday(), fractions, adjust_reason_bits & 0xFF]
    )
