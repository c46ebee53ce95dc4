"""Decoded GATT values -> Reading types: times, time source, stable ids."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from edge.errors import MalformedPayload
from edge.gatt.glucose import decode_glucose_measurement
from edge.gatt.glucose_context import GlucoseContext, Meal
from edge.gatt.heart_rate import decode_heart_rate_measurement
from edge.gatt.to_reading import (
    clock_offset_seconds,
    glucose_reading,
    glucose_reading_id,
    heart_rate_reading,
)
from edge.readings import TimeSource, reading_from_json, stable_reading_id

DEVICE = "AA:BB:CC:DD:EE:01"
RECEIVED = datetime(2026, 3, 15, 9, 0, 0, 123456, tzinfo=UTC)
PLUS2 = timezone(timedelta(hours=2))

# seq 1, base 2026-03-15 08:30:00, offset -5 min, 95 mg/dL (kg/L), capillary whole blood, finger
GLUCOSE = bytes.fromhex("030100EA07030F081E00FBFF5FB011")
# seq 0x1234, 2026-01-02 03:04:05, 5.50 mmol/L, status bit 5 (HI), context follows
GLUCOSE_MOL = bytes.fromhex("1E3412EA070102030405" "26B2" "24" "2000")


def test_heart_rate_reading_is_timed_and_identified_by_the_gateway() -> None:
    m = decode_heart_rate_measurement(bytes.fromhex("1648" "0004" "0002"))
    r = heart_rate_reading(m, device_id=DEVICE, patient="p-1", received_at=RECEIVED)
    assert r.bpm == 72 and r.sensor_contact == "detected"
    assert r.rr_intervals_s == (Decimal(1), Decimal("0.5"))
    assert r.time_source is TimeSource.GATEWAY
    assert r.effective_time == r.received_at == RECEIVED
    assert r.id == stable_reading_id(DEVICE, "2a37", "2026-03-15T09:00:00.123456+00:00")
    again = heart_rate_reading(m, device_id=DEVICE, patient="p-1", received_at=RECEIVED)
    assert again.id == r.id
    later = heart_rate_reading(
        m, device_id=DEVICE, patient="p-1", received_at=RECEIVED + timedelta(microseconds=1)
    )
    assert later.id != r.id
    assert reading_from_json(r.model_dump_json()) == r


def test_heart_rate_id_does_not_depend_on_the_zone_of_received_at() -> None:
    m = decode_heart_rate_measurement(b"\x06\x48")
    a = heart_rate_reading(m, device_id=DEVICE, patient="p", received_at=RECEIVED)
    b = heart_rate_reading(m, device_id=DEVICE, patient="p", received_at=RECEIVED.astimezone(PLUS2))
    assert a.id == b.id and b.received_at.tzinfo is UTC
    with pytest.raises(ValueError, match="aware"):
        heart_rate_reading(m, device_id=DEVICE, patient="p", received_at=datetime(2026, 1, 1))


def test_glucose_reading_uses_device_time_in_the_local_zone() -> None:
    m = decode_glucose_measurement(GLUCOSE)
    r = glucose_reading(m, None, device_id=DEVICE, patient="p-1", received_at=RECEIVED,
                        clock_offset_s=0, local_tz=PLUS2)
    assert r.device_time == datetime(2026, 3, 15, 8, 25)  # base time + (-5 min)
    assert r.effective_time == datetime(2026, 3, 15, 6, 25, tzinfo=UTC)
    assert r.time_source is TimeSource.DEVICE
    assert r.sequence_number == 1 and r.time_offset_min == -5
    assert r.concentration == Decimal("0.00095") and r.unit == "kg/L"
    assert r.mg_dl == Decimal(95) and r.mmol_l == Decimal("5.27")
    assert r.sample_type == "capillary_whole_blood" and r.sample_location == "finger"
    assert r.meal is None and r.status == ()
    assert r.id == stable_reading_id(
        DEVICE, "2a18", "2026-03-15T08:25:00|0.00095|kg/L|capillary_whole_blood|finger"
    )
    assert r.id == glucose_reading_id(DEVICE, m)


def test_glucose_reading_corrects_a_known_clock_offset() -> None:
    m = decode_glucose_measurement(GLUCOSE)
    # the meter's clock runs 2 minutes fast: the sample was taken 2 minutes earlier
    r = glucose_reading(m, None, device_id=DEVICE, patient="p", received_at=RECEIVED,
                        clock_offset_s=120, local_tz=UTC)
    assert r.effective_time == datetime(2026, 3, 15, 8, 23, tzinfo=UTC)
    assert r.time_source is TimeSource.DEVICE_CORRECTED
    assert r.clock_offset_s == 120
    assert r.device_time == datetime(2026, 3, 15, 8, 25)  # as reported, uncorrected
    plain = glucose_reading(m, None, device_id=DEVICE, patient="p", received_at=RECEIVED,
                            clock_offset_s=0, local_tz=UTC)
    assert plain.id == r.id  # the id comes from what the meter sent, not from corrections


def test_glucose_reading_with_context_status_and_precision() -> None:
    m = decode_glucose_measurement(GLUCOSE_MOL)
    ctx = GlucoseContext(sequence_number=0x1234, meal=Meal.POSTPRANDIAL)
    r = glucose_reading(m, ctx, device_id=DEVICE, patient="p", received_at=RECEIVED,
                        clock_offset_s=0, local_tz=UTC)
    assert r.meal == "postprandial"
    assert str(r.mmol_l) == "5.50" and r.unit == "mol/L"
    assert r.status == ("result_too_high",)
    assert reading_from_json(r.model_dump_json()) == r
    with pytest.raises(MalformedPayload, match="does not match"):
        glucose_reading(m, GlucoseContext(sequence_number=1), device_id=DEVICE, patient="p",
                        received_at=RECEIVED, clock_offset_s=0, local_tz=UTC)


def test_glucose_special_value() -> None:
    m = decode_glucose_measurement(bytes.fromhex("020100EA07030F081E00FF0711"))
    r = glucose_reading(m, None, device_id=DEVICE, patient="p", received_at=RECEIVED,
                        clock_offset_s=0, local_tz=UTC)
    assert r.concentration is None and r.concentration_special == "nan"
    assert r.mg_dl is None and r.mmol_l is None


def test_same_record_decoded_twice_has_the_same_id_and_other_devices_differ() -> None:
    a = decode_glucose_measurement(GLUCOSE)
    b = decode_glucose_measurement(bytes(GLUCOSE))
    assert glucose_reading_id(DEVICE, a) == glucose_reading_id(DEVICE.lower(), b)
    assert glucose_reading_id("AA:BB:CC:DD:EE:02", a) != glucose_reading_id(DEVICE, a)


def test_renumbered_record_keeps_its_id_but_another_measurement_does_not() -> None:
    import dataclasses

    a = decode_glucose_measurement(GLUCOSE)
    renumbered = dataclasses.replace(a, sequence_number=(a.sequence_number + 500) % 65536)
    assert glucose_reading_id(DEVICE, renumbered) == glucose_reading_id(DEVICE, a)
    later = dataclasses.replace(a, base_time=a.base_time + timedelta(minutes=1))
    assert glucose_reading_id(DEVICE, later) != glucose_reading_id(DEVICE, a)
    assert a.concentration is not None
    other_value = dataclasses.replace(a, concentration=a.concentration + 1)
    assert glucose_reading_id(DEVICE, other_value) != glucose_reading_id(DEVICE, a)


@pytest.mark.parametrize(
    ("meter", "gateway", "offset"),
    [
        (datetime(2026, 3, 15, 8, 31, 30, 400000), datetime(2026, 3, 15, 8, 30), 90),
        (datetime(2026, 3, 15, 8, 29, 29, 400000), datetime(2026, 3, 15, 8, 30), -31),
        (datetime(2026, 3, 15, 8, 30), datetime(2026, 3, 15, 8, 30), 0),
        (datetime(2026, 3, 15, 10, 30, tzinfo=PLUS2), datetime(2026, 3, 15, 8, 30, tzinfo=UTC),
         0),
    ],
)
def test_clock_offset_seconds(meter: datetime, gateway: datetime, offset: int) -> None:
    assert clock_offset_seconds(meter, gateway) == offset


@pytest.mark.parametrize(
    ("base", "offset_s", "zone"),
    [
        # year 9999 on a meter whose clock runs 10 hours slow: the correction leaves the calendar
        (datetime(9999, 12, 31, 23, 0), -36_000, UTC),
        # the first instant of the calendar, in a zone east of UTC
        (datetime(1, 1, 1, 0, 0), 0, PLUS2),
    ],
)
def test_a_time_that_leaves_the_calendar_is_implausible_not_an_overflow(
    base: datetime, offset_s: int, zone: timezone
) -> None:
    """Issue 14 (2): an OverflowError here crash-looped the meter's task; now it is a refusal
    of that one record with a countable reason."""
    import dataclasses

    from edge.errors import Implausible

    m = dataclasses.replace(decode_glucose_measurement(GLUCOSE), base_time=base,
                            time_offset_min=None)
    with pytest.raises(Implausible) as exc:
        glucose_reading(m, None, device_id=DEVICE, patient="p", received_at=RECEIVED,
                        clock_offset_s=offset_s, local_tz=zone)
    assert exc.value.reason == "implausible_time"
    assert str(base.year) not in str(exc.value)
