"""The whole pure path of one notification: decode -> reading -> plausibility (values and
time window) -> the stored JSON -> the FHIR Bundle. What a hostile device sends may be refused
(:class:`MalformedPayload`, :class:`Implausible`) and nothing else; what is accepted must store
and load unchanged and make a Bundle that is valid JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

from edge import fhir
from edge.errors import Implausible, MalformedPayload
from edge.gatt.current_time import decode_current_time
from edge.gatt.glucose import decode_glucose_measurement
from edge.gatt.glucose_context import decode_glucose_context
from edge.gatt.heart_rate import decode_heart_rate_measurement
from edge.gatt.to_reading import clock_offset_seconds, glucose_reading, heart_rate_reading
from edge.intake import plausibility
from edge.readings import GlucoseReading, HeartRateReading, reading_from_json
from fuzz.data import Data

DEVICE = "AA:BB:CC:DD:EE:01"
PATIENT = "p-0001"
HUB = "hub-1"
#: the hub's synchronised now (a fixed instant keeps every input reproducible)
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
WINDOW = plausibility.TimeWindow()


def _zone(d: Data) -> timezone:
    minutes = d.sint(2) % (2 * 24 * 60 - 1) - (24 * 60 - 1)  # -23:59 … +23:59
    return timezone(timedelta(minutes=minutes))


def _accept(reading: HeartRateReading | GlucoseReading) -> None:
    plausibility.check(reading)
    plausibility.check_time(reading, NOW, WINDOW)
    stored = reading.model_dump_json().encode()
    assert reading_from_json(stored) == reading, "a reading does not survive the vault"
    bundle = json.loads(fhir.bundle_bytes([reading], hub_id=HUB))
    assert bundle["resourceType"] == "Bundle"


def _heart_rate(d: Data) -> None:
    received = NOW + timedelta(microseconds=d.sint(4))
    m = decode_heart_rate_measurement(d.rest())
    _accept(heart_rate_reading(m, device_id=DEVICE, patient=PATIENT, received_at=received))


def _glucose(d: Data) -> None:
    zone = _zone(d)
    if d.flag():
        # the offset as the session learns it: the meter's Current Time against the hub's
        meter_now = decode_current_time(d.take(10)).exact_time
        offset = clock_offset_seconds(meter_now, NOW.astimezone(zone).replace(tzinfo=None))
    else:
        offset = d.sint(4)
    m = decode_glucose_measurement(d.sized(32))
    raw_ctx = d.rest()
    ctx = decode_glucose_context(raw_ctx) if raw_ctx else None
    reading = glucose_reading(m, ctx, device_id=DEVICE, patient=PATIENT, received_at=NOW,
                              clock_offset_s=offset, local_tz=zone)
    _accept(reading)


def to_reading(data: bytes) -> None:
    d = Data(data)
    try:
        if d.u8() & 1:
            _heart_rate(d)
        else:
            _glucose(d)
    except (MalformedPayload, Implausible):
        return
