"""One suite, two front ends: bleak's API in, the same observable device behaviour out.

``bluez``: unchanged bleak 3.1 (BlueZ backend) against the fake ``org.bluez`` on a private
dbus-daemon. ``inprocess``: the in-process scanner/client double. Every test runs on both.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakDBusError, BleakGATTProtocolError, BleakGATTProtocolErrorCode

from edge.ble.agent import pairing_agent
from edge.ble.agent_policy import PairingPolicy
from edge.testing import eventually
from firmware_sim.devices.glucose import GlucoseMeter
from firmware_sim.devices.heart_rate import HeartRateStrap
from firmware_sim.fleet import Fleet, build_fleet
from firmware_sim.inprocess import PolicyAgent, bound_sim, inprocess_frontend
from firmware_sim.model.contract import uuid16
from tests.support.bluez import bluez_frontend

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

HR_SERVICE = uuid16(0x180D)
HR_MEASUREMENT = uuid16(0x2A37)
BODY_SENSOR_LOCATION = uuid16(0x2A38)
HR_CONTROL_POINT = uuid16(0x2A39)
BATTERY_LEVEL = uuid16(0x2A19)
MANUFACTURER = uuid16(0x2A29)
MODEL = uuid16(0x2A24)
SERIAL = uuid16(0x2A25)
FIRMWARE = uuid16(0x2A26)
GLUCOSE_SERVICE = uuid16(0x1808)
GLUCOSE_MEASUREMENT = uuid16(0x2A18)
GLUCOSE_CONTEXT = uuid16(0x2A34)
GLUCOSE_FEATURE = uuid16(0x2A51)
RACP = uuid16(0x2A52)

WAIT = 10.0  # bound on every wait for an event


@dataclass
class Sim:
    kind: str
    fleet: Fleet
    Scanner: Any
    Client: Any

    def hr(self, n: int = 1) -> HeartRateStrap:
        device = self.fleet.get(f"SIM-HR-{n}")
        assert isinstance(device, HeartRateStrap)
        return device

    def glucose(self) -> GlucoseMeter:
        device = self.fleet.get("SIM-GLU-1")
        assert isinstance(device, GlucoseMeter)
        return device


@pytest.fixture(params=["bluez", "inprocess"])
async def sim(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> AsyncIterator[Sim]:
    fleet = build_fleet(devices="hr:2,glucose:1", seed=11)
    frontend = (
        bluez_frontend(monkeypatch, tmp_path) if request.param == "bluez" else inprocess_frontend
    )
    async with frontend(fleet) as (scanner, client):
        yield Sim(request.param, fleet, scanner, client)


#: a passkey meter and a numeric-comparison strap, for the pairing tests
PAIRING_DEVICES = "glucose:1:pairing=passkey:passkey=123456,hr:1:pairing=numeric_comparison"
PASSKEY = 123456


@pytest.fixture(params=["bluez", "inprocess"])
async def pairing_sim(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> AsyncIterator[Sim]:
    fleet = build_fleet(devices=PAIRING_DEVICES, seed=12)
    frontend = (
        bluez_frontend(monkeypatch, tmp_path) if request.param == "bluez" else inprocess_frontend
    )
    async with frontend(fleet) as (scanner, client):
        yield Sim(request.param, fleet, scanner, client)


@contextlib.asynccontextmanager
async def agent(sim: Sim, policy: PairingPolicy) -> AsyncIterator[None]:
    """The gateway's pairing policy as the agent: on the bus (the gateway's own agent) for
    the fake BlueZ, as the double's agent in process."""
    if sim.kind == "bluez":
        async with pairing_agent(policy):
            yield
        return
    double = bound_sim(sim.Client)
    double.agent = PolicyAgent(policy)
    try:
        yield
    finally:
        double.agent = None


async def scan_for(
    sim: Sim, names: set[str], service_uuids: list[str] | None = None
) -> dict[str, tuple[BLEDevice, AdvertisementData]]:
    """Scan until every name in ``names`` was seen; return everything seen by then."""
    seen: dict[str, tuple[BLEDevice, AdvertisementData]] = {}
    done = asyncio.Event()

    def detected(device: BLEDevice, adv: AdvertisementData) -> None:
        seen[adv.local_name or device.name or device.address] = (device, adv)
        if names <= seen.keys():
            done.set()

    async with sim.Scanner(detected, service_uuids=service_uuids):
        await asyncio.wait_for(done.wait(), WAIT)
    return seen


async def device_named(sim: Sim, name: str) -> BLEDevice:
    return (await scan_for(sim, {name}))[name][0]


def hr_value(data: bytes) -> int:
    flags = data[0]
    return struct.unpack_from("<H", data, 1)[0] if flags & 1 else data[1]


async def test_active_scan_sees_every_device_with_its_advertisement(sim: Sim) -> None:
    names = {d.name for d in sim.fleet.devices}
    seen = await scan_for(sim, names)
    assert names <= seen.keys()
    for device in sim.fleet.devices:
        found, adv = seen[device.name]
        assert found.address == device.address
        assert adv.local_name == device.name
        assert [u.lower() for u in adv.service_uuids] == list(device.advertisement().service_uuids)
        assert -100 <= adv.rssi <= -20


async def test_scan_with_service_filter_reports_only_matching_devices(sim: Sim) -> None:
    seen = await scan_for(sim, {"SIM-HR-1", "SIM-HR-2"}, service_uuids=[HR_SERVICE])
    # the glucose meter is announced in the same batch as the straps, so it would be here
    assert set(seen) == {"SIM-HR-1", "SIM-HR-2"}


async def test_connect_and_read_device_information_battery_and_location(sim: Sim) -> None:
    strap = sim.hr()
    device = await device_named(sim, strap.name)
    async with sim.Client(device) as client:
        assert client.is_connected
        assert strap.connected
        uuids = {s.uuid for s in client.services}
        assert {HR_SERVICE, uuid16(0x180F), uuid16(0x180A)} <= uuids
        assert bytes(await client.read_gatt_char(MANUFACTURER)) == strap.info.manufacturer.encode()
        assert bytes(await client.read_gatt_char(MODEL)) == strap.info.model.encode()
        assert bytes(await client.read_gatt_char(SERIAL)) == strap.info.serial.encode()
        assert bytes(await client.read_gatt_char(FIRMWARE)) == strap.info.firmware.encode()
        assert bytes(await client.read_gatt_char(BATTERY_LEVEL)) == bytes([strap.battery.level])
        assert bytes(await client.read_gatt_char(BODY_SENSOR_LOCATION)) == bytes(
            [strap.body_location]
        )


async def test_connect_by_address_string(sim: Sim) -> None:
    strap = sim.hr(2)
    async with sim.Client(strap.address, timeout=WAIT) as client:
        assert client.is_connected
        assert bytes(await client.read_gatt_char(BODY_SENSOR_LOCATION)) == bytes(
            [strap.body_location]
        )


@pytest.mark.parametrize("use_start_notify", [True, False], ids=["StartNotify", "AcquireNotify"])
async def test_heart_rate_notifications(sim: Sim, use_start_notify: bool) -> None:
    strap = sim.hr()
    strap.set_heart_rate(131)
    device = await device_named(sim, strap.name)
    got: asyncio.Queue[bytes] = asyncio.Queue()
    async with sim.Client(device) as client:
        await client.start_notify(
            HR_MEASUREMENT,
            lambda _c, data: got.put_nowait(bytes(data)),
            bluez={"use_start_notify": use_start_notify},
        )
        values = []
        for _ in range(2):
            await strap.tick()  # one second of the strap's life: one measurement
            values.append(await asyncio.wait_for(got.get(), WAIT))
        assert [hr_value(v) for v in values] == [131, 131]
        await client.stop_notify(HR_MEASUREMENT)
        # with AcquireNotify the client only closes its socket: the CCCD write follows
        await eventually(
            lambda: not strap.notifying(HR_MEASUREMENT), within_s=WAIT, what="notify session ended"
        )


async def test_heart_rate_control_point_rejects_unknown_value_with_att_0x80(sim: Sim) -> None:
    device = await device_named(sim, sim.hr().name)
    async with sim.Client(device) as client:
        await client.write_gatt_char(HR_CONTROL_POINT, b"\x01", response=True)  # reset: fine
        with pytest.raises(BleakGATTProtocolError) as info:
            await client.write_gatt_char(HR_CONTROL_POINT, b"\x02", response=True)
        assert info.value.code == 0x80


async def test_glucose_read_before_pairing_fails_like_an_encrypted_meter(sim: Sim) -> None:
    meter = sim.glucose()
    device = await device_named(sim, meter.name)
    async with sim.Client(device) as client:
        with pytest.raises(BleakGATTProtocolError) as info:
            await client.read_gatt_char(GLUCOSE_FEATURE)
        assert info.value.code == BleakGATTProtocolErrorCode.INSUFFICIENT_AUTHORIZATION
        assert not meter.paired


@pytest.mark.parametrize("use_start_notify", [True, False], ids=["StartNotify", "AcquireNotify"])
async def test_glucose_pair_and_racp_sync_of_all_records(sim: Sim, use_start_notify: bool) -> None:
    meter = sim.glucose()
    expected = [r.sequence for r in meter.records]
    assert len(expected) >= 20
    device = await device_named(sim, meter.name)
    measurements: list[bytes] = []
    contexts: list[bytes] = []
    racp: asyncio.Queue[bytes] = asyncio.Queue()
    async with sim.Client(device) as client:
        await client.pair()
        assert meter.paired
        feature = await client.read_gatt_char(GLUCOSE_FEATURE)
        assert int.from_bytes(feature, "little") == meter.features
        how = {"use_start_notify": use_start_notify}
        await client.start_notify(
            GLUCOSE_MEASUREMENT, lambda _c, d: measurements.append(bytes(d)), bluez=how
        )
        await client.start_notify(
            GLUCOSE_CONTEXT, lambda _c, d: contexts.append(bytes(d)), bluez=how
        )
        await client.start_notify(RACP, lambda _c, d: racp.put_nowait(bytes(d)), bluez=how)
        await client.write_gatt_char(RACP, b"\x01\x01", response=True)
        final = await asyncio.wait_for(racp.get(), WAIT)
        if not use_start_notify:
            # one socket per characteristic: no order between them, as with real BlueZ
            await eventually(
                lambda: len(measurements) >= len(expected), within_s=WAIT, what="all measurements"
            )
            await eventually(
                lambda: len(contexts) >= sum(m[0] >> 4 & 1 for m in measurements),
                within_s=WAIT,
                what="a context for each flagged measurement",
            )
    assert final == b"\x06\x00\x01\x01"
    assert [struct.unpack_from("<H", m, 1)[0] for m in measurements] == expected
    with_context = [struct.unpack_from("<H", m, 1)[0] for m in measurements if m[0] & 0x10]
    assert [struct.unpack_from("<H", c, 1)[0] for c in contexts] == with_context


async def test_racp_write_without_indications_is_att_0x81(sim: Sim) -> None:
    meter = sim.glucose()
    device = await device_named(sim, meter.name)
    async with sim.Client(device, pair=True) as client:
        assert meter.paired
        with pytest.raises(BleakGATTProtocolError) as info:
            await client.write_gatt_char(RACP, b"\x01\x01", response=True)
        assert info.value.code == 0x81


async def test_disconnect_runs_the_callback_and_drops_the_link(sim: Sim) -> None:
    strap = sim.hr()
    device = await device_named(sim, strap.name)
    gone = asyncio.Event()
    client = sim.Client(device, disconnected_callback=lambda _c: gone.set())
    await client.connect()
    assert strap.connected
    await client.disconnect()
    await asyncio.wait_for(gone.wait(), WAIT)
    assert not client.is_connected
    assert not strap.connected


async def test_link_drop_by_the_device_is_reported(sim: Sim) -> None:
    strap = sim.hr()
    device = await device_named(sim, strap.name)
    gone = asyncio.Event()
    client = sim.Client(device, disconnected_callback=lambda _c: gone.set())
    await client.connect()
    assert strap.drop_link("out-of-range")
    await asyncio.wait_for(gone.wait(), WAIT)
    assert not client.is_connected


async def test_unpair_forgets_the_bond(sim: Sim) -> None:
    meter = sim.glucose()
    device = await device_named(sim, meter.name)
    client = sim.Client(device, pair=True)
    await client.connect()
    assert meter.paired
    await client.unpair()
    assert not meter.paired
    assert not meter.connected
    assert not client.is_connected


# --- pairing through an agent ------------------------------------------------------------------


async def pair_error(sim: Sim, name: str, policy: PairingPolicy | None) -> str | None:
    """Connect to ``name`` and pair, with ``policy`` as the agent (None: no agent); the D-Bus
    error the pairing ended with (None: it bonded)."""
    device = await device_named(sim, name)
    async with sim.Client(device) as client:
        try:
            if policy is None:
                await client.pair()
            else:
                async with agent(sim, policy):
                    await client.pair()
        except BleakDBusError as exc:
            return exc.dbus_error
        # a bonded link is encrypted: the meter's encrypted characteristics answer
        if name.startswith("SIM-GLU"):
            await client.read_gatt_char(GLUCOSE_FEATURE)
    return None


async def test_a_passkey_meter_bonds_with_the_right_passkey(pairing_sim: Sim) -> None:
    meter = pairing_sim.glucose()
    policy = PairingPolicy(meter.address, passkey=PASSKEY)
    assert await pair_error(pairing_sim, meter.name, policy) is None
    assert meter.paired


async def test_a_wrong_passkey_fails_and_leaves_no_bond(pairing_sim: Sim) -> None:
    meter = pairing_sim.glucose()
    policy = PairingPolicy(meter.address, passkey=654321)
    error = await pair_error(pairing_sim, meter.name, policy)
    assert error == "org.bluez.Error.AuthenticationFailed"
    assert not meter.paired
    # and the right passkey afterwards bonds
    assert await pair_error(pairing_sim, meter.name,
                            PairingPolicy(meter.address, passkey=PASSKEY)) is None
    assert meter.paired


async def test_a_passkey_meter_cannot_bond_without_an_agent(pairing_sim: Sim) -> None:
    meter = pairing_sim.glucose()
    assert await pair_error(pairing_sim, meter.name, None) == "org.bluez.Error.AuthenticationFailed"
    assert not meter.paired


async def test_the_device_cancelling_ends_the_pairing_as_cancelled(pairing_sim: Sim) -> None:
    meter = pairing_sim.glucose()
    meter.inject_fault({"pairing_refused": "canceled"})
    policy = PairingPolicy(meter.address, passkey=PASSKEY)
    error = await pair_error(pairing_sim, meter.name, policy)
    assert error == "org.bluez.Error.AuthenticationCanceled"
    assert not meter.paired


@pytest.mark.parametrize(("confirm", "expected"),
                         [(True, None), (False, "org.bluez.Error.AuthenticationFailed")],
                         ids=["confirmed", "not-confirmed"])
async def test_numeric_comparison_bonds_only_when_confirmed(
    pairing_sim: Sim, confirm: bool, expected: str | None
) -> None:
    strap = pairing_sim.hr()
    policy = PairingPolicy(strap.address, confirm=confirm)
    assert await pair_error(pairing_sim, strap.name, policy) == expected
    assert strap.paired is confirm


async def test_the_agent_does_not_answer_for_another_device(pairing_sim: Sim) -> None:
    meter = pairing_sim.glucose()
    policy = PairingPolicy(pairing_sim.hr().address, passkey=PASSKEY)
    error = await pair_error(pairing_sim, meter.name, policy)
    assert error == "org.bluez.Error.AuthenticationFailed"
    assert not meter.paired
