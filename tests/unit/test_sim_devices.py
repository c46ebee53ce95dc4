"""Simulated device behaviour through the transport-agnostic Peripheral operations."""

import random
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from firmware_sim import encoders as enc
from firmware_sim.devices.common import FIRMWARE_REVISION, MANUFACTURER_NAME, SERIAL_NUMBER
from firmware_sim.devices.glucose import (
    CURRENT_TIME,
    GLUCOSE_FEATURE,
    GlucoseMeter,
)
from firmware_sim.devices.heart_rate import (
    BODY_SENSOR_LOCATION,
    HEART_RATE_CONTROL_POINT,
    HeartRateStrap,
)
from firmware_sim.model.clock import ManualClock
from firmware_sim.model.contract import PeripheralError, Security, SimErrorCode, uuid16
from firmware_sim.model.recorder import RecordingEvents

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def strap(clock: ManualClock, seed: int = 1, **options: Any) -> HeartRateStrap:
    return HeartRateStrap(
        name="SIM-HR-1",
        address="C1:22:33:44:55:66",
        clock=clock,
        rng=random.Random(seed),
        **options,
    )


def meter(clock: ManualClock, seed: int = 1, **options: Any) -> GlucoseMeter:
    return GlucoseMeter(
        name="SIM-GLU-1",
        address="00:22:33:44:55:66",
        clock=clock,
        rng=random.Random(seed),
        **options,
    )


@dataclass
class HR:
    bpm: int
    uint16: bool
    contact: int
    energy: int | None
    rr: list[int]


def parse_hr(value: bytes) -> HR:
    """A minimal reader written for the tests, from the profile table."""
    flags = value[0]
    i = 1
    if flags & 1:
        bpm = struct.unpack_from("<H", value, i)[0]
        i += 2
    else:
        bpm = value[i]
        i += 1
    energy = None
    if flags & 0x08:
        energy = struct.unpack_from("<H", value, i)[0]
        i += 2
    rr: list[int] = []
    if flags & 0x10:
        rest = value[i:]
        assert len(rest) % 2 == 0
        rr = [struct.unpack_from("<H", rest, j)[0] for j in range(0, len(rest), 2)]
    return HR(bpm, bool(flags & 1), (flags >> 1) & 0b11, energy, rr)


async def run_strap(device: HeartRateStrap, clock: ManualClock, seconds: int) -> list[bytes]:
    events = RecordingEvents()
    device.set_events(events)
    if not device.connected:
        await device.connect()
    await device.start_notify(device.measurement.handle)
    for _ in range(seconds):
        await clock.advance(1)
        await device.tick()
    return events.values(device.measurement.handle)


async def test_hr_services_and_static_characteristics() -> None:
    clock = ManualClock(START)
    d = strap(clock)
    uuids = [s.uuid for s in d.services()]
    assert uuids == [uuid16(0x180D), uuid16(0x180F), uuid16(0x180A)]
    assert d.advertisement().service_uuids == (uuid16(0x180D),)
    assert d.address_type == "random"
    await d.connect()
    assert await d.read(d.char(BODY_SENSOR_LOCATION).handle) == b"\x01"
    assert await d.read(d.char(MANUFACTURER_NAME).handle) == b"Simulated Devices Ltd"
    assert (await d.read(d.char(SERIAL_NUMBER).handle)).startswith(b"HR")
    assert await d.read(d.char(FIRMWARE_REVISION).handle) == b"2.3.1"
    assert 0 < (await d.read(d.char(uuid16(0x2A19)).handle))[0] <= 100
    handles = [c.handle for s in d.services() for c in s.characteristics]
    assert len(handles) == len(set(handles))


async def test_hr_measurements_realistic_and_capped() -> None:
    clock = ManualClock(START)
    d = strap(clock, hr_format="varying")
    values = await run_strap(d, clock, 60)
    assert len(values) == 60
    parsed = [parse_hr(v) for v in values]
    assert all(40 <= p.bpm <= 190 for p in parsed)
    assert {p.uint16 for p in parsed} == {True, False}
    all_rr = [rr for p in parsed for rr in p.rr]
    assert all(300 < rr < 1600 for rr in all_rr)  # 1/1024 s: 37..200 bpm
    assert len(set(all_rr)) > 10  # beat-to-beat variability
    for p, v in zip(parsed, values, strict=True):
        cap = enc.max_rr_intervals(uint16=bool(p.uint16), energy=p.energy is not None)
        assert len(p.rr) <= cap
        assert len(v) <= 20
    assert any(p.energy is not None for p in parsed)


async def test_hr_backlog_fills_the_first_notification_to_the_mtu_cap() -> None:
    clock = ManualClock(START)
    d = strap(clock, hr_format="uint8", contact="always", energy=False, resting_bpm=120)
    for _ in range(10):  # beats accumulate while nobody listens
        await clock.advance(1)
        await d.tick()
    values = await run_strap(d, clock, 1)
    assert len(parse_hr(values[0]).rr) == 9


async def test_hr_sensor_contact_comes_and_goes() -> None:
    clock = ManualClock(START)
    d = strap(clock, seed=4)
    parsed = [parse_hr(v) for v in await run_strap(d, clock, 300)]
    contacts = [p.contact for p in parsed]
    assert 3 in contacts and 2 in contacts  # detected and not detected
    assert all(p.rr == [] for p in parsed if p.contact == 2)


async def test_hr_contact_unsupported_and_uint16_format() -> None:
    clock = ManualClock(START)
    d = strap(clock, contact="unsupported", hr_format="uint16")
    parsed = [parse_hr(v) for v in await run_strap(d, clock, 5)]
    assert all(p.contact == 0 and p.uint16 for p in parsed)


async def test_hr_set_heart_rate() -> None:
    clock = ManualClock(START)
    d = strap(clock, contact="always")
    d.set_heart_rate(150)
    parsed = [parse_hr(v) for v in await run_strap(d, clock, 4)]
    assert [p.bpm for p in parsed] == [150] * 4
    d.set_heart_rate(None)
    parsed = [parse_hr(v) for v in await run_strap(d, clock, 3)]
    assert all(p.bpm != 150 for p in parsed)


async def test_hr_control_point_resets_energy_and_rejects_others() -> None:
    clock = ManualClock(START)
    d = strap(clock, contact="always", energy=True)
    before = [parse_hr(v).energy for v in await run_strap(d, clock, 60)]
    assert max(e for e in before if e is not None) >= 1
    cp = d.char(HEART_RATE_CONTROL_POINT).handle
    await d.write(cp, b"\x01", with_response=True)
    assert d.energy_j == 0
    after = [parse_hr(v).energy for v in await run_strap(d, clock, 10)]
    assert [e for e in after if e is not None] == [0]
    for bad in (b"\x00", b"\x02", b"\x01\x01", b""):
        with pytest.raises(PeripheralError) as err:
            await d.write(cp, bad, with_response=True)
        assert err.value.code is SimErrorCode.ATT_ERROR
        assert err.value.att_code == 0x80
        assert err.value.message == "Operation failed with ATT error: 0x80"


async def test_operations_need_a_connection_and_proper_flags() -> None:
    clock = ManualClock(START)
    d = strap(clock)
    with pytest.raises(PeripheralError) as err:
        await d.read(d.char(BODY_SENSOR_LOCATION).handle)
    assert err.value.code is SimErrorCode.FAILED
    await d.connect()
    with pytest.raises(PeripheralError) as err:
        await d.read(d.measurement.handle)  # notify only
    assert err.value.code is SimErrorCode.NOT_PERMITTED
    with pytest.raises(PeripheralError) as err:
        await d.start_notify(d.char(BODY_SENSOR_LOCATION).handle)
    assert err.value.code is SimErrorCode.NOT_SUPPORTED
    with pytest.raises(PeripheralError) as err:
        await d.write(d.char(HEART_RATE_CONTROL_POINT).handle, b"\x01", with_response=False)
    assert err.value.code is SimErrorCode.NOT_PERMITTED


async def test_notifications_stop_on_disconnect_and_cccd_is_readable() -> None:
    clock = ManualClock(START)
    d = strap(clock)
    await run_strap(d, clock, 1)
    cccd = d.measurement.cccd_handle
    assert cccd is not None
    assert await d.read_descriptor(cccd) == b"\x01\x00"
    await d.disconnect()
    await d.connect()
    assert await d.read_descriptor(cccd) == b"\x00\x00"
    events = RecordingEvents()
    d.set_events(events)
    await clock.advance(1)
    await d.tick()
    assert events.values(d.measurement.handle) == []


async def test_drop_link_reports_the_reason() -> None:
    clock = ManualClock(START)
    d = strap(clock)
    events = RecordingEvents()
    d.set_events(events)
    assert not d.drop_link("x")
    await d.connect()
    assert d.drop_link("supervision-timeout")
    assert events.disconnects == ["supervision-timeout"]
    assert not d.connected


async def test_glucose_characteristics_refuse_an_unencrypted_link() -> None:
    clock = ManualClock(START)
    m = meter(clock)
    glucose = next(s for s in m.services() if s.uuid == uuid16(0x1808))
    assert {c.security for c in glucose.characteristics} == {Security.ENCRYPTED}
    await m.connect()
    with pytest.raises(PeripheralError) as err:
        await m.read(m.char(GLUCOSE_FEATURE).handle)
    assert err.value.code is SimErrorCode.NOT_AUTHORIZED
    assert err.value.dbus_error_name == "org.bluez.Error.NotAuthorized"
    with pytest.raises(PeripheralError) as err:
        await m.write(m.racp.handle, b"\x01\x01", with_response=True)
    assert err.value.code is SimErrorCode.NOT_PERMITTED
    for ch in (m.measurement, m.context_char, m.racp):
        with pytest.raises(PeripheralError) as err:
            await m.start_notify(ch.handle)
        assert err.value.code is SimErrorCode.NOT_PERMITTED
    # the unencrypted services still answer
    assert len(await m.read(m.char(CURRENT_TIME).handle)) == 10
    await m.pair()
    assert await m.read(m.char(GLUCOSE_FEATURE).handle) == enc.uint16(0x037F)
    # the bond survives a reconnect, and a second pair is AlreadyExists
    await m.disconnect()
    await m.connect()
    assert m.paired
    with pytest.raises(PeripheralError) as err:
        await m.pair()
    assert err.value.code is SimErrorCode.ALREADY_EXISTS
    await m.unpair()
    assert not m.paired and not m.connected


async def test_meter_clock_is_skewed_and_served_by_cts() -> None:
    clock = ManualClock(START)
    m = meter(clock, clock_skew_minutes=-9, utc_offset_minutes=60)
    await m.connect()
    raw = await m.read(m.char(CURRENT_TIME).handle)
    year, month, day, hh, mm, ss, dow = struct.unpack_from("<HBBBBBB", raw)
    meter_time = datetime(year, month, day, hh, mm, ss)
    assert meter_time == (START + timedelta(minutes=60 - 9)).replace(tzinfo=None)
    assert dow == meter_time.isoweekday()
    # new records carry the meter's (skewed) local time
    seq = m.add_glucose_record(101)
    assert m.records[-1].sequence == seq
    assert m.records[-1].base_time == meter_time


async def test_meter_history_has_the_awkward_records() -> None:
    clock = ManualClock(START)
    m = meter(clock, history=24)
    recs = m.records
    assert len(recs) == 24
    seqs = [r.sequence for r in recs]
    assert seqs == list(range(seqs[0], seqs[0] + 24))
    assert [r.base_time for r in recs] == sorted(r.base_time for r in recs)
    assert any(r.status == enc.STATUS_RESULT_HIGH for r in recs)
    assert any(r.status == enc.STATUS_RESULT_LOW for r in recs)
    control = [r for r in recs if r.sample_type == enc.TYPE_CONTROL_SOLUTION]
    assert control and control[0].location == enc.LOCATION_CONTROL_SOLUTION
    assert any(r.context is not None for r in recs)
    assert all(r.time_offset == 0 for r in recs)


async def test_meter_in_mmol_and_without_context_or_time_offset() -> None:
    clock = ManualClock(START)
    m = meter(clock, unit="mmol/L", context=False, time_offset=None, history=20)
    assert all(r.unit == "mmol/L" and r.context is None for r in m.records)
    value = m.records[0].measurement_bytes()
    assert value[0] & enc.GLU_FLAG_MOL_PER_L
    assert not value[0] & enc.GLU_FLAG_TIME_OFFSET
    assert not value[0] & enc.GLU_FLAG_CONTEXT
    assert uuid16(0x2A34) not in {c.uuid for s in m.services() for c in s.characteristics}


async def test_meter_adds_records_over_time() -> None:
    clock = ManualClock(START)
    m = meter(clock, new_record_every=60, history=20)
    before = m.next_sequence
    for _ in range(180):
        await clock.advance(1)
        await m.tick()
    assert len(m.records) == 23
    assert [r.sequence for r in m.records[-3:]] == [before, before + 1, before + 2]


async def test_add_glucose_record_fields() -> None:
    clock = ManualClock(START)
    m = meter(clock, history=0)
    seq = m.add_glucose_record(
        "6.2", unit="mmol/L", status=enc.STATUS_RESULT_HIGH, context={"meal": 2, "tester": 1}
    )
    rec = m.records[-1]
    assert rec.sequence == seq
    assert str(rec.concentration) == "6.2"
    assert rec.context is not None and rec.context.meal == 2
    assert rec.context_bytes() == bytes([0x06]) + struct.pack("<H", seq) + bytes([2, 0x01])
    with pytest.raises(ValueError, match="unknown context"):
        m.add_glucose_record(100, context={"mood": 3})
