"""The BLE shell's one door into the pure codecs of :mod:`edge.gatt`."""

from __future__ import annotations

from datetime import datetime, tzinfo

from edge.gatt.glucose import (
    GlucoseContext,
    GlucoseMeasurement,
    decode_glucose_context,
    decode_glucose_feature,
    decode_glucose_measurement,
)
from edge.gatt.heart_rate import decode_heart_rate_measurement
from edge.gatt.misc import decode_current_time as _decode_current_time
from edge.gatt.racp import RacpResponseCode, abort, decode_racp, report_all, report_from
from edge.gatt.to_reading import clock_offset_seconds
from edge.gatt.to_reading import glucose_reading as _glucose_reading
from edge.gatt.to_reading import heart_rate_reading as _heart_rate_reading
from edge.readings import GlucoseReading, HeartRateReading

__all__ = [
    "GlucoseContext",
    "GlucoseMeasurement",
    "RacpResponseCode",
    "abort",
    "clock_offset_seconds",
    "decode_current_time",
    "decode_glucose_context",
    "decode_glucose_feature",
    "decode_glucose_measurement",
    "decode_racp",
    "glucose_reading",
    "heart_rate_reading",
    "report_all",
    "report_from",
]


def heart_rate_reading(
    data: bytes, *, device_id: str, patient: str, received_at: datetime
) -> HeartRateReading:
    """Decode a 0x2A37 notification into a reading; raises MalformedPayload."""
    m = decode_heart_rate_measurement(data)
    return _heart_rate_reading(m, device_id=device_id, patient=patient, received_at=received_at)


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
    """A decoded glucose record (and its context) as a reading."""
    return _glucose_reading(
        m,
        ctx,
        device_id=device_id,
        patient=patient,
        received_at=received_at,
        clock_offset_s=clock_offset_s,
        local_tz=local_tz,
    )


def decode_current_time(data: bytes) -> datetime:
    """The meter's local time (naive) from a 0x2A2B value; raises MalformedPayload."""
    return _decode_current_time(data).exact_time
