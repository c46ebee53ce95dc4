"""The vault's value types, and the pure helpers that turn readings and times into rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from edge.readings import GlucoseReading, HeartRateReading, reading_from_json

AnyReading = HeartRateReading | GlucoseReading

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


@dataclass(frozen=True)
class PendingReading:
    """A stored, undelivered reading as the forwarder sees it."""

    seq: int
    id: str
    patient: str
    kind: str
    #: ``reading.model_dump_json().encode()``
    payload: bytes

    def reading(self) -> HeartRateReading | GlucoseReading:
        """The Reading this row holds."""
        return reading_from_json(self.payload)


@dataclass(frozen=True)
class AppendResult:
    """How many of a batch were stored, and how many were already there."""

    stored: int
    duplicates: int


@dataclass(frozen=True)
class VaultStats:
    """Queue depth, sizes and refusal counts (``edge status``)."""

    pending: int
    oldest_pending_age_s: float | None
    db_bytes: int
    pending_bytes: int
    delivered_retained: int
    refusals: dict[str, int]
    #: readings held back until the hub clock is synchronised (counted in ``pending`` too)
    held: int = 0


@dataclass(frozen=True)
class Binding:
    """A device on the allow-list."""

    address: str
    kind: str
    patient: str
    bonded: bool
    bound_at: datetime
    bound_by: str
    last_seen: datetime | None


@dataclass(frozen=True)
class Consent:
    """One patient's consent record, active or revoked."""

    patient: str
    scope: str
    granted_at: datetime | None
    granted_by: str | None
    revoked_at: datetime | None
    revoked_by: str | None

    @property
    def active(self) -> bool:
        return self.granted_at is not None and self.revoked_at is None


@dataclass(frozen=True)
class GlucoseCursor:
    """Where a glucose meter's record sync stands."""

    last_sequence: int
    last_device_time: datetime | None
    clock_offset_s: int
    updated_at: datetime


@dataclass(frozen=True)
class AuditEntry:
    """One link of the hash-chained audit log."""

    id: int
    at: datetime
    actor: str
    action: str
    subject: str
    prev_hash: str
    hash: str


#: a glucose meter's cursor as stored: (ADDRESS, last_sequence, ISO device time, offset)
CursorRow = tuple[str, int, str | None, int]


def cursor_row(
    address: str, last_sequence: int, last_device_time: datetime | None, clock_offset_s: int
) -> CursorRow:
    """The stored form of a glucose meter's cursor."""
    return (
        address.upper(),
        int(last_sequence),
        None if last_device_time is None else last_device_time.isoformat(),
        int(clock_offset_s),
    )


def identity_time_us(reading: AnyReading) -> int:
    """The time a reading's identity is bound to, in µs since the epoch.

    A stable id derives from (device, characteristic, sequence number or device time), so two
    readings with the same id carry the same identity time: the meter's own record time for
    glucose (the corrected effective time may change with the clock-offset estimate), the
    effective time otherwise (for a heart-rate strap, the gateway's receive time).
    """
    t = reading.device_time if isinstance(reading, GlucoseReading) else reading.effective_time
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return (t - _EPOCH) // _US


def to_ts(dt: datetime) -> float:
    """A datetime as the REAL the tables store."""
    return dt.timestamp()


def from_ts(value: float | None) -> datetime | None:
    """A stored REAL (or NULL) as an aware UTC datetime."""
    return None if value is None else datetime.fromtimestamp(value, UTC)


def from_ts_req(value: float) -> datetime:
    """A stored non-NULL REAL as an aware UTC datetime."""
    return datetime.fromtimestamp(value, UTC)
