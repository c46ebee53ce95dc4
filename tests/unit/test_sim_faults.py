"""Each fault of a fault plan, triggered from a plan dict (as in a scenario) or at run time."""

import asyncio
import random
import struct

import pytest

from firmware_sim import encoders as enc
from firmware_sim.devices.glucose import GlucoseMeter
from firmware_sim.devices.heart_rate import BODY_SENSOR_LOCATION, HeartRateStrap
from firmware_sim.faults import FaultPlan, FaultSpecError
from firmware_sim.model.clock import ManualClock
from firmware_sim.model.contract import PeripheralError, SimErrorCode
from firmware_sim.model.recorder import RecordingEvents


def strap(clock: ManualClock, **faults: object) -> HeartRateStrap:
    return HeartRateStrap(
        name="SIM-HR-1",
        address="C1:22:33:44:55:66",
        clock=clock,
        rng=random.Random(2),
        faults=FaultPlan.from_dict(faults),
        contact="always",
    )


def meter(clock: ManualClock, **faults: object) -> GlucoseMeter:
    return GlucoseMeter(
        name="SIM-GLU-1",
        address="00:22:33:44:55:66",
        clock=clock,
        rng=random.Random(2),
        faults=FaultPlan.from_dict(faults),
        history=20,
        record_interval=0.1,
    )


async def hr_stream(d: HeartRateStrap, clock: ManualClock, seconds: int) -> RecordingEvents:
    events = RecordingEvents()
    d.set_events(events)
    if not d.connected:
        await d.connect()
    await d.start_notify(d.measurement.handle)
    for _ in range(seconds):
        await clock.advance(1)
        await d.tick()
    return events


async def glucose_report(m: GlucoseMeter, clock: ManualClock) -> RecordingEvents:
    events = RecordingEvents()
    m.set_events(events)
    await m.connect()
    await m.pair()
    for ch in (m.measurement, m.context_char, m.racp):
        await m.start_notify(ch.handle)
    await m.write(m.racp.handle, b"\x01\x01", with_response=True)
    await clock.advance(10)
    return events


def seqs(m: GlucoseMeter, events: RecordingEvents) -> list[int]:
    return [struct.unpack_from("<H", v, 1)[0] for v in events.values(m.measurement.handle)]


def test_plan_validation_names_the_key() -> None:
    with pytest.raises(FaultSpecError, match=r"faults: unknown fault 'explode'"):
        FaultPlan.from_dict({"explode": True})
    with pytest.raises(FaultSpecError, match=r"malformed: expected one of"):
        FaultPlan.from_dict({"malformed": "garbled"})
    with pytest.raises(FaultSpecError, match=r"connect_failures: expected an integer"):
        FaultPlan.from_dict({"connect_failures": True})
    with pytest.raises(FaultSpecError, match=r"connect_failure_probability"):
        FaultPlan.from_dict({"connect_failure_probability": 1.5})
    with pytest.raises(FaultSpecError, match=r"pairing_refused"):
        FaultPlan.from_dict({"pairing_refused": "maybe"})
    plan = FaultPlan.from_dict({"implausible": True, "slow_response_seconds": 2})
    assert plan.to_dict() == {"implausible": True, "slow_response_seconds": 2.0}


async def test_connect_failures_first_n() -> None:
    d = strap(ManualClock(), connect_failures=2)
    for _ in range(2):
        with pytest.raises(PeripheralError) as err:
            await d.connect()
        assert err.value.code is SimErrorCode.FAILED
        assert err.value.message == "le-connection-abort-by-local"
        assert err.value.dbus_error_name == "org.bluez.Error.Failed"
        assert err.value.dbus_error_body == ["le-connection-abort-by-local"]
    await d.connect()
    assert d.connected


@pytest.mark.parametrize(("p", "failures"), [(0.0, 0), (1.0, 20)])
async def test_connect_failure_probability_extremes(p: float, failures: int) -> None:
    d = strap(ManualClock(), connect_failure_probability=p)
    failed = 0
    for _ in range(20):
        try:
            await d.connect()
            await d.disconnect()
        except PeripheralError:
            failed += 1
    assert failed == failures


async def test_connect_failure_probability_is_seeded() -> None:
    async def outcomes() -> list[bool]:
        d = strap(ManualClock(), connect_failure_probability=0.5)
        out = []
        for _ in range(30):
            try:
                await d.connect()
                await d.disconnect()
                out.append(True)
            except PeripheralError:
                out.append(False)
        return out

    first = await outcomes()
    assert first == await outcomes()
    assert 3 < first.count(False) < 27


async def test_link_drop_after_n_notifications_once() -> None:
    clock = ManualClock()
    d = strap(clock, drop_link_after_notifications=3)
    events = await hr_stream(d, clock, 6)
    assert len(events.values(d.measurement.handle)) == 3
    assert events.disconnects == ["fault-drop-after-notifications"]
    assert not d.connected
    events = await hr_stream(d, clock, 6)  # drop_link_times = 1: the next link holds
    assert len(events.values(d.measurement.handle)) == 6
    assert events.disconnects == []


async def test_link_drop_every_connection() -> None:
    clock = ManualClock()
    d = strap(clock, drop_link_after_notifications=2, drop_link_times=0)
    for _ in range(3):
        events = await hr_stream(d, clock, 4)
        assert len(events.values(d.measurement.handle)) == 2
        assert len(events.disconnects) == 1


async def test_in_progress_on_the_nth_operation() -> None:
    clock = ManualClock()
    d = strap(clock)
    await d.connect()
    d.inject_fault({"in_progress_on_operation": 2})
    handle = d.char(BODY_SENSOR_LOCATION).handle
    assert await d.read(handle) == b"\x01"
    with pytest.raises(PeripheralError) as err:
        await d.read(handle)
    assert err.value.code is SimErrorCode.IN_PROGRESS
    assert err.value.dbus_error_name == "org.bluez.Error.InProgress"
    assert await d.read(handle) == b"\x01"  # one-shot


@pytest.mark.parametrize("kind", ["truncated", "sfloat_nan"])
async def test_malformed_hr_notifications_are_truncated(kind: str) -> None:
    clock = ManualClock()
    ref = strap(clock)
    good = (await hr_stream(ref, clock, 6)).values(ref.measurement.handle)
    clock = ManualClock()
    d = strap(clock, malformed=kind, malformed_every=3)
    bad = (await hr_stream(d, clock, 6)).values(d.measurement.handle)
    assert len(bad) == 6
    for i, (g, b) in enumerate(zip(good, bad, strict=True)):
        if (i + 1) % 3 == 0:
            assert b == g[:-1]
        else:
            assert b == g


async def test_malformed_hr_reserved_flags() -> None:
    clock = ManualClock()
    d = strap(clock, malformed="reserved_flags")
    values = (await hr_stream(d, clock, 3)).values(d.measurement.handle)
    assert all(v[0] & 0xE0 == 0xE0 for v in values)


async def test_implausible_heart_rate() -> None:
    clock = ManualClock()
    d = strap(clock, implausible=True)
    values = (await hr_stream(d, clock, 3)).values(d.measurement.handle)
    for v in values:
        assert v[0] & 0x01  # needs uint16
        assert struct.unpack_from("<H", v, 1)[0] == 400


def concentration_word(value: bytes) -> int:
    flags = value[0]
    offset = 10 + (2 if flags & enc.GLU_FLAG_TIME_OFFSET else 0)
    assert flags & enc.GLU_FLAG_CONCENTRATION
    return int(struct.unpack_from("<H", value, offset)[0])


@pytest.mark.parametrize(("kind", "word"), [("sfloat_nan", 0x07FF), ("sfloat_nres", 0x0800)])
async def test_glucose_sfloat_specials(kind: str, word: int) -> None:
    clock = ManualClock()
    m = meter(clock, malformed=kind, malformed_every=4)
    values = (await glucose_report(m, clock)).values(m.measurement.handle)
    assert len(values) == 20
    words = [concentration_word(v) for v in values]
    assert [i for i, w in enumerate(words) if w == word] == [3, 7, 11, 15, 19]


async def test_glucose_truncated_and_reserved_flags() -> None:
    clock = ManualClock()
    ref = meter(clock)
    good = (await glucose_report(ref, clock)).values(ref.measurement.handle)
    clock = ManualClock()
    m = meter(clock, malformed="truncated")
    bad = (await glucose_report(m, clock)).values(m.measurement.handle)
    assert [len(b) for b in bad] == [len(g) - 1 for g in good]
    clock = ManualClock()
    m = meter(clock, malformed="reserved_flags")
    flagged = (await glucose_report(m, clock)).values(m.measurement.handle)
    assert all(v[0] & 0xE0 == 0xE0 for v in flagged)


async def test_implausible_glucose_is_900_mg_dl() -> None:
    clock = ManualClock()
    m = meter(clock, implausible=True)
    values = (await glucose_report(m, clock)).values(m.measurement.handle)
    assert {concentration_word(v) for v in values} == {0xB384}  # 900 x 10^-5 kg/L
    assert all(not v[0] & enc.GLU_FLAG_MOL_PER_L for v in values)


async def test_duplicate_records() -> None:
    clock = ManualClock()
    m = meter(clock, duplicate_records=True)
    events = await glucose_report(m, clock)
    expected = [r.sequence for r in m.records for _ in (0, 1)]
    assert seqs(m, events) == expected
    assert events.values(m.racp.handle) == [b"\x06\x00\x01\x01"]


async def test_out_of_order_records() -> None:
    clock = ManualClock()
    m = meter(clock, out_of_order_records=True)
    events = await glucose_report(m, clock)
    assert seqs(m, events) == [r.sequence for r in reversed(m.records)]


async def test_sequence_reset_renumbers_from_one() -> None:
    clock = ManualClock()
    m = meter(clock)
    before = m.records
    assert before[0].sequence != 1
    m.inject_fault({"reset_sequence": True})
    after = m.records
    assert [r.sequence for r in after] == list(range(1, 21))
    assert [r.base_time for r in after] == [r.base_time for r in before]
    assert m.add_glucose_record(100) == 21
    assert not m.faults.reset_sequence  # applied once
    # from a scenario, too
    m2 = meter(ManualClock(), reset_sequence=True)
    assert m2.records[0].sequence == 1


async def test_slow_responses_wait_on_the_clock() -> None:
    clock = ManualClock()
    d = strap(clock, slow_response_seconds=2.0)
    connecting = asyncio.ensure_future(d.connect())
    await clock.advance(1.9)
    assert not connecting.done()
    await clock.advance(0.2)
    assert connecting.done() and d.connected
    reading = asyncio.ensure_future(d.read(d.char(BODY_SENSOR_LOCATION).handle))
    await clock.advance(1)
    assert not reading.done()
    await clock.advance(1)
    assert reading.result() == b"\x01"


async def test_invisible_device_cannot_be_reached() -> None:
    clock = ManualClock()
    d = strap(clock)
    events = RecordingEvents()
    d.set_events(events)
    await d.connect()
    d.inject_fault({"invisible": True})
    assert not d.visible
    assert not d.connected
    assert events.disconnects == ["device-gone"]
    assert events.advertisement_changes == 1
    with pytest.raises(PeripheralError) as err:
        await d.connect()
    assert err.value.code is SimErrorCode.UNKNOWN_OBJECT
    d.clear_faults()
    assert d.visible
    await d.connect()


async def test_set_visible_false_acts_like_invisible() -> None:
    d = strap(ManualClock())
    d.set_visible(False)
    assert not d.visible
    with pytest.raises(PeripheralError):
        await d.connect()
    d.set_visible(True)
    await d.connect()


@pytest.mark.parametrize(
    ("refusal", "code"),
    [
        ("failed", SimErrorCode.AUTHENTICATION_FAILED),
        ("rejected", SimErrorCode.AUTHENTICATION_REJECTED),
    ],
)
async def test_pairing_refused(refusal: str, code: SimErrorCode) -> None:
    m = meter(ManualClock(), pairing_refused=refusal)
    await m.connect()
    with pytest.raises(PeripheralError) as err:
        await m.pair()
    assert err.value.code is code
    assert err.value.dbus_error_name == f"org.bluez.Error.{code.value}"
    assert not m.paired
