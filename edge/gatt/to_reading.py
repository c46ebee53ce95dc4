"""Decoded GATT values -> :mod:`edge.readings` types (pure; the caller supplies every time)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo

from edge.errors import Implausible, MalformedPayload
from edge.gatt.glucose import GlucoseMeasurement
from edge.gatt.glucose_context import GMC, GlucoseContext
from edge.gatt.heart_rate import HeartRateMeasurement
from edge.gatt.uuids import Characteristic
from edge.readings import GlucoseReading, HeartRateReading, TimeSource, stable_reading_id

#: the refusal reason of a measurement time outside any plausible window (as in
#: ``edge.intake.plausibility.REASON_TIME``; gatt does not import intake)
REASON_IMPLAUSIBLE_TIME = "implausible_time"


def _utc(when: datetime, what: str) -> datetime:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware")
    return when.astimezone(UTC)


def heart_rate_reading(
    m: HeartRateMeasurement, *, device_id: str, patient: str, received_at: datetime
) -> HeartRateReading:
    """A strap sends no time: the reading is timed (and identified) by the gateway's receipt."""
    received = _utc(received_at, "received_at")
    return HeartRateReading(
        id=stable_reading_id(
            device_id,
            Characteristic.HEART_RATE_MEASUREMENT.key,
            received.isoformat(timespec="microseconds"),
        ),
        device_id=device_id,
        patient=patient,
        effective_time=received,
        time_source=TimeSource.GATEWAY,
        received_at=received,
        bpm=m.heart_rate_bpm,
        sensor_contact=m.sensor_contact.value,
        energy_expended_kj=m.energy_expended_kj,
        rr_intervals_s=m.rr_intervals_s,
    )


def glucose_reading_id(device_id: str, m: GlucoseMeasurement) -> str:
    """The stable id of a glucose record: (device, 2a18, device time and the measurement).

    The sequence number is deliberately left out: a meter that restarts its numbering re-sends
    its stored records under new numbers, and they must keep their ids so that the resync
    stores nothing twice. Two different records never share time, value, unit, type and site.
    """
    value = m.concentration_special or m.concentration
    return stable_reading_id(
        device_id,
        Characteristic.GLUCOSE_MEASUREMENT.key,
        f"{m.device_time.isoformat()}|{value}|{m.unit}|{m.sample_type}|{m.sample_location}",
    )


def glucose_reading(
    m: GlucoseMeasurement,
    ctx: GlucoseContext | None,
    *,
    device_id: str,
    patient: str,
    received_at: datetime,
    clock_offset_s: int,
    local_tz: tzinfo,
) -> GlucoseReading:
    """A glucose reading timed by the meter's clock, corrected by its known offset.

    ``clock_offset_s`` is the meter's clock minus the gateway's (see
    :func:`clock_offset_seconds`); ``local_tz`` is the zone the meter's local time is in.
    A time that leaves the calendar once corrected (a year-9999 record on a meter whose clock
    is behind) raises :class:`Implausible` ``implausible_time``, never ``OverflowError``.
    """
    if ctx is not None and ctx.sequence_number != m.sequence_number:
        raise MalformedPayload(GMC, "context sequence number does not match its measurement")
    device_time = m.device_time
    try:
        corrected = device_time - timedelta(seconds=clock_offset_s)
        effective = corrected.replace(tzinfo=local_tz).astimezone(UTC)
    except OverflowError:
        raise Implausible(
            REASON_IMPLAUSIBLE_TIME, "measurement time leaves the calendar once corrected"
        ) from None
    return GlucoseReading(
        id=glucose_reading_id(device_id, m),
        device_id=device_id,
        patient=patient,
        effective_time=effective,
        time_source=TimeSource.DEVICE_CORRECTED if clock_offset_s else TimeSource.DEVICE,
        received_at=_utc(received_at, "received_at"),
        sequence_number=m.sequence_number,
        device_time=device_time,
        time_offset_min=m.time_offset_min,
        clock_offset_s=clock_offset_s,
        concentration=m.concentration,
        concentration_special=m.concentration_special.value if m.concentration_special else None,
        unit=m.unit.value,
        mg_dl=m.mg_dl,
        mmol_l=m.mmol_l,
        sample_type=m.sample_type.value if m.sample_type else None,
        sample_location=m.sample_location.value if m.sample_location else None,
        status=tuple(s.value for s in m.status),
        meal=ctx.meal.value if ctx is not None and ctx.meal is not None else None,
    )


def clock_offset_seconds(meter_now_local: datetime, gateway_now_local: datetime) -> int:
    """The meter's clock minus the gateway's, in whole seconds (rounded).

    Both are wall-clock times in the meter's zone, read at (nearly) the same moment: the meter's
    from Current Time 0x2A2B, the gateway's from its own clock converted to that zone.
    """
    if meter_now_local.tzinfo is not None and gateway_now_local.tzinfo is not None:
        return round((meter_now_local - gateway_now_local).total_seconds())
    meter = meter_now_local.replace(tzinfo=None)
    gateway = gateway_now_local.replace(tzinfo=None)
    return round((meter - gateway).total_seconds())
