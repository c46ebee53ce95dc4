"""The in-process bleak double: bleak's API in, bleak's objects and exceptions out."""

import asyncio
import struct
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.backends.service import BleakGATTServiceCollection
from bleak.exc import (
    BleakCharacteristicNotFoundError,
    BleakDBusError,
    BleakDeviceNotFoundError,
    BleakError,
    BleakGATTProtocolError,
)

from firmware_sim.devices.glucose import GlucoseMeter
from firmware_sim.fleet import Fleet, build_fleet
from firmware_sim.inprocess import SimBleak, inprocess_frontend
from firmware_sim.model.clock import ManualClock
from firmware_sim.model.contract import uuid16

HR_SERVICE = uuid16(0x180D)
GLUCOSE_SERVICE = uuid16(0x1808)
HRM = uuid16(0x2A37)
HR_CP = uuid16(0x2A39)
BODY_LOCATION = uuid16(0x2A38)
GLUCOSE_MEASUREMENT = uuid16(0x2A18)
GLUCOSE_CONTEXT = uuid16(0x2A34)
GLUCOSE_FEATURE = uuid16(0x2A51)
RACP = uuid16(0x2A52)
MANUFACTURER = uuid16(0x2A29)

WAIT = 10.0  # real seconds; a bound, never a pace


@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    f = build_fleet(
        devices="hr:2,glucose:1",
        seed=8,
        clock=ManualClock(datetime(2026, 5, 1, 7, 30, tzinfo=UTC), autojump=True),
    )
    await f.start()
    yield f
    await f.stop()


@pytest.fixture
def sim(fleet: Fleet) -> SimBleak:
    return SimBleak(fleet)


async def test_discover_returns_bleak_objects(sim: SimBleak, fleet: Fleet) -> None:
    found = await sim.Scanner.discover(timeout=2, return_adv=True)
    assert set(found) == {d.address for d in fleet.devices}
    for address, (device, adv) in found.items():
        assert isinstance(device, BLEDevice) and isinstance(adv, AdvertisementData)
        assert device.address == address
        assert device.name == adv.local_name == fleet.get(address).name
        assert -100 <= adv.rssi <= -30
    devices = await sim.Scanner.discover(timeout=1)
    assert sorted(d.name or "" for d in devices) == ["SIM-GLU-1", "SIM-HR-1", "SIM-HR-2"]


async def test_scan_with_service_filter_and_callback(sim: SimBleak) -> None:
    seen: dict[str, AdvertisementData] = {}
    two = asyncio.Event()

    def on_adv(device: BLEDevice, adv: AdvertisementData) -> None:
        seen[device.address] = adv
        if len(seen) >= 2:
            two.set()

    async with sim.Scanner(on_adv, service_uuids=[HR_SERVICE]) as scanner:
        await asyncio.wait_for(two.wait(), WAIT)
        assert {d.name for d in scanner.discovered_devices} == {"SIM-HR-1", "SIM-HR-2"}
    assert all(adv.service_uuids == [HR_SERVICE] for adv in seen.values())
    glucose = await sim.Scanner.discover(timeout=1, service_uuids=[GLUCOSE_SERVICE])
    assert [d.name for d in glucose] == ["SIM-GLU-1"]


async def test_rssi_varies_between_advertisements(sim: SimBleak, fleet: Fleet) -> None:
    target = fleet.get("SIM-HR-1").address
    rssis: list[int] = []
    enough = asyncio.Event()

    def on_adv(device: BLEDevice, adv: AdvertisementData) -> None:
        if device.address == target:
            rssis.append(adv.rssi)
            if len(rssis) >= 20:
                enough.set()

    async with sim.Scanner(on_adv):
        await asyncio.wait_for(enough.wait(), WAIT)
    assert len(set(rssis)) > 1


async def test_passive_scan_needs_or_patterns_like_bleak(sim: SimBleak) -> None:
    with pytest.raises(BleakError, match="or_patterns"):
        sim.Scanner(scanning_mode="passive")


async def test_find_device_by_address_and_invisible(sim: SimBleak, fleet: Fleet) -> None:
    hr = fleet.get("SIM-HR-2")
    dev = await sim.Scanner.find_device_by_address(hr.address.lower(), timeout=2)
    assert dev is not None and dev.name == "SIM-HR-2"
    hr.set_visible(False)
    assert await sim.Scanner.find_device_by_address(hr.address, timeout=2) is None
    with pytest.raises(BleakDeviceNotFoundError):
        await sim.Client(hr.address, timeout=2).connect()
    with pytest.raises(BleakDeviceNotFoundError):
        await sim.Client(dev, timeout=2).connect()  # seen before, gone now


async def test_connect_read_and_services(sim: SimBleak, fleet: Fleet) -> None:
    hr = fleet.get("SIM-HR-1")
    client = sim.Client(hr.address)
    with pytest.raises(BleakError, match="Service Discovery has not been performed"):
        _ = client.services
    async with client:
        assert client.is_connected
        assert isinstance(client.services, BleakGATTServiceCollection)
        assert {s.uuid for s in client.services} == {
            HR_SERVICE,
            uuid16(0x180F),
            uuid16(0x180A),
        }
        char = client.services.get_characteristic(HRM)
        assert isinstance(char, BleakGATTCharacteristic)
        assert char.properties == ["notify"]
        assert [d.uuid for d in char.descriptors] == [uuid16(0x2902)]
        assert await client.read_gatt_char(BODY_LOCATION) == bytearray(b"\x01")
        assert await client.read_gatt_char(MANUFACTURER) == bytearray(b"Simulated Devices Ltd")
        with pytest.raises(BleakCharacteristicNotFoundError):
            await client.read_gatt_char(uuid16(0x2A00))
    assert not client.is_connected
    with pytest.raises(BleakError, match="Not connected"):
        await client.start_notify(HRM, lambda c, d: None)


async def test_notify_stream(sim: SimBleak, fleet: Fleet) -> None:
    got: list[tuple[str, bytearray]] = []
    ten = asyncio.Event()

    def on_hr(sender: BleakGATTCharacteristic, data: bytearray) -> None:
        got.append((sender.uuid, data))
        if len(got) >= 10:
            ten.set()

    devices = await sim.Scanner.discover(timeout=1, service_uuids=[HR_SERVICE])
    async with sim.Client(devices[0]) as client:
        await client.start_notify(HRM, on_hr)
        await asyncio.wait_for(ten.wait(), WAIT)
        await client.stop_notify(HRM)
        n = len(got)
        await fleet.clock.sleep(5)
        assert len(got) == n
    assert all(uuid == HRM for uuid, _ in got)
    assert all(isinstance(data, bytearray) and len(data) >= 2 for _, data in got)


async def test_async_notify_callback(sim: SimBleak, fleet: Fleet) -> None:
    got = asyncio.Event()

    async def on_hr(sender: BleakGATTCharacteristic, data: bytearray) -> None:
        got.set()

    async with sim.Client(fleet.get("SIM-HR-1").address) as client:
        await client.start_notify(HRM, on_hr)
        await asyncio.wait_for(got.wait(), WAIT)


async def test_att_error_from_control_point(sim: SimBleak, fleet: Fleet) -> None:
    async with sim.Client(fleet.get("SIM-HR-1").address) as client:
        await client.write_gatt_char(HR_CP, b"\x01", response=True)
        with pytest.raises(BleakGATTProtocolError) as err:
            await client.write_gatt_char(HR_CP, b"\x05", response=True)
        assert err.value.code == 0x80


async def test_glucose_needs_pairing_then_syncs_via_racp(sim: SimBleak, fleet: Fleet) -> None:
    meter = fleet.get("SIM-GLU-1")
    assert isinstance(meter, GlucoseMeter)
    async with sim.Client(meter.address) as client:
        with pytest.raises(BleakGATTProtocolError) as perr:
            await client.read_gatt_char(GLUCOSE_FEATURE)
        assert perr.value.code == 0x08  # NotAuthorized -> insufficient authorization
        with pytest.raises(BleakDBusError) as derr:
            await client.write_gatt_char(RACP, b"\x01\x01", response=True)
        assert derr.value.dbus_error == "org.bluez.Error.NotPermitted"
        with pytest.raises(BleakDBusError):
            await client.start_notify(GLUCOSE_MEASUREMENT, lambda c, d: None)

        await client.pair()
        await client.pair()  # already paired: no-op, as bleak
        assert await client.read_gatt_char(GLUCOSE_FEATURE) == bytearray(b"\x7f\x03")

        measurements: list[bytearray] = []
        contexts: list[bytearray] = []
        racp: list[bytearray] = []
        done = asyncio.Event()

        def on_racp(_: BleakGATTCharacteristic, data: bytearray) -> None:
            racp.append(data)
            done.set()

        await client.start_notify(GLUCOSE_MEASUREMENT, lambda _, d: measurements.append(d))
        await client.start_notify(GLUCOSE_CONTEXT, lambda _, d: contexts.append(d))
        with pytest.raises(BleakGATTProtocolError) as cccd:
            await client.write_gatt_char(RACP, b"\x01\x01", response=True)
        assert cccd.value.code == 0x81
        await client.start_notify(RACP, on_racp)

        cursor = meter.records[5].sequence
        request = bytes([1, 3, 1]) + struct.pack("<H", cursor)
        await client.write_gatt_char(RACP, request, response=True)
        with pytest.raises(BleakGATTProtocolError) as busy:
            await client.write_gatt_char(RACP, b"\x04\x01", response=True)
        assert busy.value.code == 0x80
        await asyncio.wait_for(done.wait(), WAIT)
    assert racp == [bytearray(b"\x06\x00\x01\x01")]
    got = [struct.unpack_from("<H", m, 1)[0] for m in measurements]
    assert got == [r.sequence for r in meter.records[5:]]
    assert len(contexts) == sum(1 for r in meter.records[5:] if r.context is not None)


async def test_disconnected_callback_on_drop_and_local_disconnect(
    sim: SimBleak, fleet: Fleet
) -> None:
    hr = fleet.get("SIM-HR-2")
    calls: list[object] = []
    dropped = asyncio.Event()

    def on_disconnect(client: object) -> None:
        calls.append(client)
        dropped.set()

    client = sim.Client(hr.address, disconnected_callback=on_disconnect)
    await client.connect()
    hr.drop_link("supervision-timeout")
    await asyncio.wait_for(dropped.wait(), WAIT)
    assert calls == [client]
    assert not client.is_connected
    await client.connect()
    await client.disconnect()
    assert calls == [client, client]
    # as with bleak: services are gone after a disconnect, so resolving fails first
    with pytest.raises(BleakError, match="Service Discovery has not been performed"):
        await client.read_gatt_char(BODY_LOCATION)


async def test_connect_retries_abort_by_local_like_bleak(sim: SimBleak, fleet: Fleet) -> None:
    hr = fleet.get("SIM-HR-1")
    hr.inject_fault({"connect_failures": 3})
    async with sim.Client(hr.address) as client:
        assert client.is_connected
    assert hr.fault_state.connect_failures_left == 0
    hr.inject_fault({"connect_failure_probability": 1.0})
    with pytest.raises(TimeoutError):
        await sim.Client(hr.address, timeout=3).connect()


async def test_in_progress_is_retried_on_reads_not_on_start_notify(
    sim: SimBleak, fleet: Fleet
) -> None:
    hr = fleet.get("SIM-HR-1")
    async with sim.Client(hr.address) as client:
        hr.inject_fault({"in_progress_on_operation": 1})
        assert await client.read_gatt_char(BODY_LOCATION) == bytearray(b"\x01")
        hr.inject_fault({"in_progress_on_operation": 1})
        with pytest.raises(BleakDBusError) as err:
            await client.start_notify(HRM, lambda c, d: None)
        assert err.value.dbus_error == "org.bluez.Error.InProgress"


@pytest.mark.parametrize(
    ("refusal", "name"),
    [
        ("failed", "org.bluez.Error.AuthenticationFailed"),
        ("rejected", "org.bluez.Error.AuthenticationRejected"),
    ],
)
async def test_pairing_refused(sim: SimBleak, fleet: Fleet, refusal: str, name: str) -> None:
    meter = fleet.get("SIM-GLU-1")
    meter.inject_fault({"pairing_refused": refusal})
    async with sim.Client(meter.address) as client:
        with pytest.raises(BleakDBusError) as err:
            await client.pair()
        assert err.value.dbus_error == name
    with pytest.raises(BleakDBusError):
        await sim.Client(meter.address, pair=True).connect()


async def test_pair_on_connect_and_unpair(sim: SimBleak, fleet: Fleet) -> None:
    meter = fleet.get("SIM-GLU-1")
    client = sim.Client(meter.address, pair=True)
    await client.connect()
    assert meter.paired and client.is_connected
    assert await client.read_gatt_char(GLUCOSE_FEATURE)
    await client.unpair()
    assert not meter.paired and not meter.connected and not client.is_connected


async def test_slow_device_hits_the_connect_timeout(sim: SimBleak, fleet: Fleet) -> None:
    hr = fleet.get("SIM-HR-2")
    hr.inject_fault({"slow_response_seconds": 20})
    with pytest.raises(TimeoutError):
        await sim.Client(hr.address, timeout=5).connect()
    hr.clear_faults()
    async with sim.Client(hr.address) as client:
        assert client.is_connected


async def test_device_added_while_scanning_is_seen(sim: SimBleak, fleet: Fleet) -> None:
    seen = asyncio.Event()

    def on_adv(device: BLEDevice, adv: AdvertisementData) -> None:
        if adv.local_name == "SIM-GLU-2":
            seen.set()

    async with sim.Scanner(on_adv):
        fleet.add("glucose", history=20)
        await asyncio.wait_for(seen.wait(), WAIT)


async def test_frontend_context_manager_starts_and_stops_the_fleet() -> None:
    fleet = build_fleet(devices="hr:1", clock=ManualClock(autojump=True))
    async with inprocess_frontend(fleet) as (scanner_factory, client_factory):
        assert fleet.running
        devices = await scanner_factory.discover(timeout=1)
        async with client_factory(devices[0]) as client:
            assert await client.read_gatt_char(BODY_LOCATION) == bytearray(b"\x01")
    assert not fleet.running


async def test_unbound_classes_refuse() -> None:
    from firmware_sim.inprocess import SimBleakClient, SimBleakScanner

    with pytest.raises(BleakError, match="not bound"):
        SimBleakScanner()
    with pytest.raises(BleakError, match="not bound"):
        SimBleakClient("00:11:22:33:44:55")


async def test_fleet50_one_scan_finds_all_and_ten_connect_at_once() -> None:
    from firmware_sim.scenario import load_scenario

    spec = load_scenario("fleet50")
    fleet = Fleet(seed=spec.seed, clock=ManualClock(autojump=True))
    spec.populate(fleet)
    async with inprocess_frontend(fleet) as (scanner_factory, client_factory):
        found = await scanner_factory.discover(timeout=5, return_adv=True)
        assert len(found) == 50
        straps = [d for d, adv in found.values() if HR_SERVICE in adv.service_uuids][:10]
        clients = [client_factory(d) for d in straps]
        await asyncio.wait_for(asyncio.gather(*(c.connect() for c in clients)), WAIT)
        assert all(c.is_connected for c in clients)
        values = await asyncio.gather(*(c.read_gatt_char(BODY_LOCATION) for c in clients))
        assert values == [bytearray(b"\x01")] * 10
        await asyncio.gather(*(c.disconnect() for c in clients))
    assert sum(d.connected for d in fleet.devices) == 0


async def test_cancelled_connect_leaves_the_device_alone() -> None:
    clock = ManualClock()
    fleet = build_fleet(devices="hr:1", clock=clock)
    hr = fleet.devices[0]
    hr.inject_fault({"slow_response_seconds": 3})
    sim = SimBleak(fleet)
    dev = BLEDevice(hr.address, hr.name, {})
    connecting = asyncio.ensure_future(sim.Client(dev).connect())
    await clock.advance(1)
    connecting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await connecting
    await clock.advance(5)
    assert not hr.connected
    assert clock.sleepers == 0
