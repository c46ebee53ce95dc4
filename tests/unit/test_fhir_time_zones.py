"""Time zones at the intake/FHIR level: the hub forwards UTC with the offset the meter's local
time had; a daylight-saving change and a meter set to the wrong zone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from edge.fhir import TZ_OFFSET_EXTENSION, device_utc_offset, observation
from edge.gatt.glucose import GlucoseMeasurement
from edge.gatt.to_reading import clock_offset_seconds, glucose_reading
from edge.intake import plausibility
from edge.readings import GlucoseReading
from tests.support.vault_support import hr

BERLIN = ZoneInfo("Europe/Berlin")
METER = "AA:BB:CC:DD:EE:02"


def record(seq: int, local: datetime, *, offset_s: int = 0) -> GlucoseReading:
    m = GlucoseMeasurement(sequence_number=seq, base_time=local,
                           concentration=Decimal("0.00104"))
    return glucose_reading(m, None, device_id=METER, patient="pt-alpha",
                           received_at=datetime(2026, 11, 1, tzinfo=UTC),
                           clock_offset_s=offset_s, local_tz=BERLIN)


def tz(r: GlucoseReading) -> tuple[str, str]:
    obs = observation(r, sensor_id="s", gateway_id="g")
    [ext] = obs["_effectiveDateTime"]["extension"]
    assert ext["url"] == TZ_OFFSET_EXTENSION
    return obs["effectiveDateTime"], ext["valueCode"]


def test_a_daylight_saving_change_keeps_utc_monotonic_and_names_each_offset() -> None:
    # 29 March 2026, Europe/Berlin: 02:00 CET becomes 03:00 CEST
    before = record(1, datetime(2026, 3, 29, 1, 50))
    after = record(2, datetime(2026, 3, 29, 3, 10))
    assert tz(before) == ("2026-03-29T00:50:00Z", "+01:00")
    assert tz(after) == ("2026-03-29T01:10:00Z", "+02:00")
    assert after.effective_time - before.effective_time == timedelta(minutes=20)
    plausibility.check(after)


def test_a_meter_that_did_not_follow_daylight_saving_is_corrected_by_its_clock_offset() -> None:
    # summer: the meter still shows winter time, one hour behind the hub's local time
    hub_local = datetime(2026, 7, 1, 14, 0)
    offset = clock_offset_seconds(hub_local - timedelta(hours=1), hub_local)
    assert offset == -3600
    r = record(3, datetime(2026, 7, 1, 12, 30), offset_s=offset)  # the meter shows 12:30
    assert tz(r) == ("2026-07-01T11:30:00Z", "+02:00")


def test_a_meter_set_to_the_wrong_zone_is_forwarded_at_the_true_instant() -> None:
    # the meter is set to New York time (UTC-4 in summer); the hub is in Berlin (UTC+2)
    hub_local = datetime(2026, 7, 1, 14, 0)
    offset = clock_offset_seconds(datetime(2026, 7, 1, 8, 0), hub_local)
    assert offset == -6 * 3600
    r = record(4, datetime(2026, 7, 1, 7, 45), offset_s=offset)  # 07:45 in New York
    assert tz(r) == ("2026-07-01T11:45:00Z", "+02:00")


def test_heart_rate_and_impossible_offsets_carry_no_extension() -> None:
    r = record(5, datetime(2026, 1, 10, 9, 0))
    assert device_utc_offset(r) == "+01:00"
    odd = r.model_copy(update={"effective_time": r.effective_time + timedelta(seconds=30)})
    assert device_utc_offset(odd) is None
    assert "_effectiveDateTime" not in observation(odd, sensor_id="s", gateway_id="g")
    assert "_effectiveDateTime" not in observation(hr(1), sensor_id="s", gateway_id="g")
