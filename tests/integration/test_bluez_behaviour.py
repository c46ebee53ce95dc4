"""The fake BlueZ on its own terms: the D-Bus surface, real-BlueZ behaviours behind switches,
and injected faults as bleak (unchanged) sees them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from bleak import BleakClient, BleakScanner
from bleak.args.bluez import BlueZNotifyArgs
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import (
    BleakDBusError,
    BleakDeviceNotFoundError,
)
from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from edge.testing import eventually
from firmware_sim.bluez import APT_HINT, BlueZOptions, BusStartError, PrivateBus
from firmware_sim.devices.heart_rate import HeartRateStrap
from firmware_sim.fleet import Fleet, build_fleet
from firmware_sim.model.contract import uuid16
from tests.support.bluez import SimBus, fake_bluez, use_fake_bluez

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

WAIT = 10.0
ADAPTER = "/org/bluez/hci0"
OM = "org.freedesktop.DBus.ObjectManager"
HR_SERVICE = uuid16(0x180D)
HR_MEASUREMENT = uuid16(0x2A37)
BATTERY_LEVEL = uuid16(0x2A19)
BODY_SENSOR_LOCATION = uuid16(0x2A38)
GLUCOSE_SERVICE = uuid16(0x1808)
CCCD = uuid16(0x2902)


# ---------------------------------------------------------------------------- helpers


class RawClient:
    """A plain D-Bus client of the fake, for what bleak does not show."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus
        self.signals: asyncio.Queue[Message] = asyncio.Queue()

    async def call(
        self, path: str, interface: str, member: str, signature: str = "", *body: Any
    ) -> Message:
        return await self.bus.call(
            Message(
                destination="org.bluez",
                path=path,
                interface=interface,
                member=member,
                signature=signature,
                body=list(body),
            )
        )

    async def objects(self) -> dict[str, dict[str, dict[str, Variant]]]:
        reply = await self.call("/", OM, "GetManagedObjects")
        assert reply.message_type is MessageType.METHOD_RETURN
        result: dict[str, dict[str, dict[str, Variant]]] = reply.body[0]
        return result

    async def devices(self) -> dict[str, str]:
        """Device paths -> names."""
        return {
            path: ifaces["org.bluez.Device1"]["Name"].value
            for path, ifaces in (await self.objects()).items()
            if "org.bluez.Device1" in ifaces
        }

    async def wait_signal(self, match: Callable[[Message], bool]) -> Message:
        async with asyncio.timeout(WAIT):
            while True:
                msg = await self.signals.get()
                if match(msg):
                    return msg


@contextlib.asynccontextmanager
async def raw_client(address: str) -> AsyncIterator[RawClient]:
    bus = await MessageBus(bus_address=address, bus_type=BusType.SYSTEM).connect()
    client = RawClient(bus)

    def on_message(msg: Message) -> bool:
        if msg.message_type is MessageType.SIGNAL:
            client.signals.put_nowait(msg)
        return False

    bus.add_message_handler(on_message)
    reply = await bus.call(
        Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member="AddMatch",
            signature="s",
            body=["type='signal',sender='org.bluez'"],
        )
    )
    assert reply.message_type is MessageType.METHOD_RETURN
    try:
        yield client
    finally:
        bus.disconnect()


async def scan(names: set[str], service_uuids: list[str] | None = None) -> dict[str, BLEDevice]:
    seen: dict[str, BLEDevice] = {}
    done = asyncio.Event()

    def detected(device: BLEDevice, adv: AdvertisementData) -> None:
        seen[adv.local_name or ""] = device
        if names <= seen.keys():
            done.set()

    async with BleakScanner(detected, service_uuids=service_uuids):
        await asyncio.wait_for(done.wait(), WAIT)
    return seen


@contextlib.asynccontextmanager
async def served(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    devices: str = "hr:2,glucose:1",
    options: BlueZOptions | None = None,
) -> AsyncIterator[tuple[SimBus, Fleet]]:
    fleet = build_fleet(devices=devices, seed=21)
    async with fake_bluez(fleet, options=options) as sim:
        use_fake_bluez(monkeypatch, sim.address, tmp_path)
        yield sim, fleet


def strap(fleet: Fleet, n: int = 1) -> HeartRateStrap:
    device = fleet.get(f"SIM-HR-{n}")
    assert isinstance(device, HeartRateStrap)
    return device


# ---------------------------------------------------------------------------- the bus


def test_missing_dbus_daemon_fails_loudly_with_the_install_command(tmp_path: Path) -> None:
    with pytest.raises(BusStartError) as info:
        PrivateBus(daemon=str(tmp_path / "no-dbus-daemon")).start()
    assert APT_HINT in str(info.value)
    assert "apt-get install" in APT_HINT


def test_private_bus_stop_kills_the_daemon_and_removes_its_directory() -> None:
    bus = PrivateBus()
    bus.start()
    pid, directory, socket_path = bus.pid, bus.directory, bus.socket_path
    assert pid is not None and directory is not None and socket_path is not None
    assert socket_path.exists()
    bus.stop()
    assert not directory.exists()
    with pytest.raises(ProcessLookupError):
        import os

        os.kill(pid, 0)


# ---------------------------------------------------------------------------- adapter, discovery


async def test_adapter_is_a_powered_central_and_devices_wait_for_discovery(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async with served(monkeypatch, tmp_path) as (sim, _fleet), raw_client(sim.address) as raw:
        objects = await raw.objects()
        adapter = objects[ADAPTER]["org.bluez.Adapter1"]
        assert "central" in adapter["Roles"].value
        assert adapter["Powered"].value is True
        assert adapter["Discovering"].value is False
        assert await raw.devices() == {}  # nothing until someone scans


async def test_discovery_filter_on_uuids_is_applied_by_the_fake_itself(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async with served(monkeypatch, tmp_path) as (sim, _fleet), raw_client(sim.address) as raw:
        filt = {"UUIDs": Variant("as", [GLUCOSE_SERVICE]), "Transport": Variant("s", "le")}
        reply = await raw.call(ADAPTER, "org.bluez.Adapter1", "SetDiscoveryFilter", "a{sv}", filt)
        assert reply.message_type is MessageType.METHOD_RETURN
        reply = await raw.call(ADAPTER, "org.bluez.Adapter1", "StartDiscovery")
        assert reply.message_type is MessageType.METHOD_RETURN
        assert sorted((await raw.devices()).values()) == ["SIM-GLU-1"]
        added = await raw.wait_signal(lambda m: m.member == "InterfacesAdded")
        assert added.path == "/"  # from bluetoothd's ObjectManager, like the real one
        assert added.body[1]["org.bluez.Device1"]["Name"].value == "SIM-GLU-1"
        again = await raw.call(ADAPTER, "org.bluez.Adapter1", "StartDiscovery")
        assert again.error_name == "org.bluez.Error.InProgress"
        await raw.call(ADAPTER, "org.bluez.Adapter1", "StopDiscovery")
        stop = await raw.call(ADAPTER, "org.bluez.Adapter1", "StopDiscovery")
        assert stop.error_name == "org.bluez.Error.Failed"


async def test_invisible_devices_are_not_reported_until_they_reappear(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async with served(monkeypatch, tmp_path) as (_sim, fleet):
        hidden = strap(fleet, 2)
        hidden.set_visible(False)
        seen: dict[str, BLEDevice] = {}
        others = asyncio.Event()
        back = asyncio.Event()

        def detected(device: BLEDevice, adv: AdvertisementData) -> None:
            seen[adv.local_name or ""] = device
            if {"SIM-HR-1", "SIM-GLU-1"} <= seen.keys():
                others.set()
            if adv.local_name == hidden.name:
                back.set()

        async with BleakScanner(detected):
            await asyncio.wait_for(others.wait(), WAIT)
            assert hidden.name not in seen  # announced with the others if it were visible
            hidden.set_visible(True)
            await asyncio.wait_for(back.wait(), WAIT)


async def test_rssi_changes_while_scanning_arrive_as_advertisements(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # no periodic repeats: every advertisement here comes from a tick
    options = BlueZOptions(advertising_interval=None)
    async with served(monkeypatch, tmp_path, "hr:1", options) as (_sim, fleet):
        device = strap(fleet)
        rssis: asyncio.Queue[int] = asyncio.Queue()

        def detected(_d: BLEDevice, adv: AdvertisementData) -> None:
            rssis.put_nowait(adv.rssi)

        async with BleakScanner(detected):
            first = await asyncio.wait_for(rssis.get(), WAIT)
            assert first == device.advertisement().rssi
            for _ in range(3):
                await device.tick()  # the strap's RSSI wanders every tick
                assert await asyncio.wait_for(rssis.get(), WAIT) == device.advertisement().rssi


# ---------------------------------------------------------------------------- switches


@pytest.mark.parametrize("keep", [False, True], ids=["default", "keep_gatt"])
async def test_gatt_objects_after_disconnect(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, keep: bool
) -> None:
    options = BlueZOptions(keep_gatt_after_disconnect=keep)
    async with (
        served(monkeypatch, tmp_path, "hr:1", options) as (sim, _fleet),
        raw_client(sim.address) as raw,
    ):
        device = (await scan({"SIM-HR-1"}))["SIM-HR-1"]
        async with BleakClient(device) as client:
            assert client.services.get_characteristic(HR_MEASUREMENT) is not None
            gatt = [p for p in await raw.objects() if "/service" in p]
            assert gatt
        left = [p for p in await raw.objects() if "/service" in p]
        assert left == (gatt if keep else [])
        if keep:  # a second connection finds the cached objects and resolves again
            async with BleakClient(device) as client:
                assert bytes(await client.read_gatt_char(BODY_SENSOR_LOCATION))


async def test_temporary_devices_are_removed_after_discovery_stops(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    options = BlueZOptions(temporary_device_timeout=0.05)
    async with (
        served(monkeypatch, tmp_path, "hr:3", options) as (sim, fleet),
        raw_client(sim.address) as raw,
    ):
        seen = await scan({"SIM-HR-1", "SIM-HR-2", "SIM-HR-3"})
        async with BleakClient(seen["SIM-HR-2"], pair=True):
            assert strap(fleet, 2).paired
        async with BleakClient(seen["SIM-HR-3"]):  # Connect alone also makes it permanent
            pass
        temporary = sim.bluez.device_path(strap(fleet, 1).address)
        removed = await raw.wait_signal(
            lambda m: m.member == "InterfacesRemoved" and m.body[0] == temporary
        )
        assert "org.bluez.Device1" in removed.body[1]
        assert removed.path == "/"
        # the bonded and the once-connected ones stay
        assert sorted((await raw.devices()).values()) == ["SIM-HR-2", "SIM-HR-3"]


@pytest.mark.parametrize("emits", [False, True], ids=["default", "read_emits_value"])
async def test_read_value_emitted_as_notification_only_behind_the_switch(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, emits: bool
) -> None:
    options = BlueZOptions(read_emits_value=emits)
    async with served(monkeypatch, tmp_path, "hr:1", options) as (_sim, fleet):
        device = (await scan({"SIM-HR-1"}))["SIM-HR-1"]
        notified: asyncio.Queue[bytes] = asyncio.Queue()
        async with BleakClient(device) as client:
            await client.start_notify(BATTERY_LEVEL, lambda _c, d: notified.put_nowait(bytes(d)))
            level = bytes(await client.read_gatt_char(BATTERY_LEVEL))
            # a write round trip: anything the read emitted has arrived by its reply
            await client.write_gatt_char(uuid16(0x2A39), b"\x01", response=True)
            if emits:
                assert notified.get_nowait() == level
            else:
                assert notified.empty()
        assert level == bytes([strap(fleet).battery.level])


# ---------------------------------------------------------------------------- faults through bleak


async def test_le_connection_abort_is_retried_by_bleak(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async with served(monkeypatch, tmp_path, "hr:1") as (_sim, fleet):
        device = strap(fleet)
        found = (await scan({"SIM-HR-1"}))["SIM-HR-1"]
        device.inject_fault({"connect_failures": 2})
        async with BleakClient(found, timeout=WAIT) as client:
            assert client.is_connected
        assert device.fault_state.connect_failures_left == 0
        assert device.connections == 1


async def test_in_progress_is_retried_by_bleak(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async with served(monkeypatch, tmp_path, "hr:1") as (_sim, fleet):
        device = strap(fleet)
        found = (await scan({"SIM-HR-1"}))["SIM-HR-1"]
        async with BleakClient(found) as client:
            device.inject_fault({"in_progress_on_operation": 1})
            value = await client.read_gatt_char(BODY_SENSOR_LOCATION)
            assert bytes(value) == bytes([device.body_location])


async def test_vanished_device_connect_is_device_not_found(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async with served(monkeypatch, tmp_path, "hr:1") as (_sim, fleet):
        found = (await scan({"SIM-HR-1"}))["SIM-HR-1"]
        strap(fleet).set_visible(False)
        with pytest.raises(BleakDeviceNotFoundError):
            await BleakClient(found, timeout=WAIT).connect()


async def test_pairing_refused_is_a_bluez_authentication_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async with served(monkeypatch, tmp_path, "glucose:1") as (_sim, fleet):
        meter = fleet.get("SIM-GLU-1")
        meter.inject_fault({"pairing_refused": "rejected"})
        found = (await scan({"SIM-GLU-1"}))["SIM-GLU-1"]
        async with BleakClient(found) as client:
            with pytest.raises(BleakDBusError) as info:
                await client.pair()
            assert info.value.dbus_error == "org.bluez.Error.AuthenticationRejected"
        assert not meter.paired


async def test_unpair_removes_the_device_object_and_twice_is_not_found(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async with (
        served(monkeypatch, tmp_path, "glucose:1") as (sim, fleet),
        raw_client(sim.address) as raw,
    ):
        meter = fleet.get("SIM-GLU-1")
        found = (await scan({"SIM-GLU-1"}))["SIM-GLU-1"]
        client = BleakClient(found, pair=True)
        await client.connect()
        assert meter.paired
        await client.unpair()
        assert not meter.paired
        assert await raw.devices() == {}
        with pytest.raises(BleakDeviceNotFoundError):
            await client.unpair()


async def test_cccd_is_managed_by_bluez_not_written_directly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async with (
        served(monkeypatch, tmp_path, "hr:1") as (sim, fleet),
        raw_client(sim.address) as raw,
    ):
        found = (await scan({"SIM-HR-1"}))["SIM-HR-1"]
        async with BleakClient(found) as client:
            char = client.services.get_characteristic(HR_MEASUREMENT)
            assert char is not None
            cccd = char.get_descriptor(CCCD)
            assert cccd is not None
            assert bytes(await client.read_gatt_descriptor(cccd)) == b"\x00\x00"
            # bleak refuses itself; bluetoothd would answer a direct write like this
            reply = await raw.call(
                cccd.obj[0], "org.bluez.GattDescriptor1", "WriteValue", "aya{sv}", b"\x01\x00", {}
            )
            assert reply.error_name == "org.bluez.Error.NotPermitted"
            assert reply.body == ["Write not permitted"]
            await client.start_notify(char, lambda _c, _d: None)
            assert bytes(await client.read_gatt_descriptor(cccd)) == b"\x01\x00"
            assert strap(fleet).notifying(HR_MEASUREMENT)


async def test_a_client_leaving_the_bus_ends_its_notify_session(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async with served(monkeypatch, tmp_path, "hr:1") as (sim, fleet):
        device = strap(fleet)
        async with raw_client(sim.address) as raw:
            await raw.call(ADAPTER, "org.bluez.Adapter1", "StartDiscovery")
            path = sim.bluez.device_path(device.address)
            reply = await raw.call(path, "org.bluez.Device1", "Connect")
            assert reply.message_type is MessageType.METHOD_RETURN
            char_path = next(
                p
                for p, ifaces in (await raw.objects()).items()
                if ifaces.get("org.bluez.GattCharacteristic1", {})
                .get("UUID", Variant("s", ""))
                .value
                == HR_MEASUREMENT
            )
            iface = "org.bluez.GattCharacteristic1"
            stop = await raw.call(char_path, iface, "StopNotify")
            assert stop.error_name == "org.bluez.Error.Failed"  # no session yet
            reply = await raw.call(char_path, iface, "StartNotify")
            assert reply.message_type is MessageType.METHOD_RETURN
            assert device.notifying(HR_MEASUREMENT)
        await eventually(
            lambda: not device.notifying(HR_MEASUREMENT), within_s=WAIT, what="notify session ended"
        )
        assert device.connected  # bluetoothd keeps the link; only the session ends


async def test_calls_to_a_removed_object_are_unknown_object(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async with served(monkeypatch, tmp_path, "hr:1") as (sim, fleet):
        path = sim.bluez.device_path(strap(fleet).address)
        async with raw_client(sim.address) as raw:
            reply = await raw.call(path, "org.bluez.Device1", "Connect")
            assert reply.error_name == "org.freedesktop.DBus.Error.UnknownObject"


@pytest.mark.parametrize("use_start_notify", [True, False], ids=["StartNotify", "AcquireNotify"])
async def test_link_drop_after_n_notifications_delivers_them_then_disconnects(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, use_start_notify: bool
) -> None:
    async with served(monkeypatch, tmp_path, "hr:1") as (_sim, fleet):
        device = strap(fleet)
        device.inject_fault({"drop_link_after_notifications": 2})
        found = (await scan({"SIM-HR-1"}))["SIM-HR-1"]
        got: asyncio.Queue[bytes] = asyncio.Queue()
        gone = asyncio.Event()
        client = BleakClient(found, disconnected_callback=lambda _c: gone.set())
        await client.connect()
        await client.start_notify(
            HR_MEASUREMENT,
            lambda _c, d: got.put_nowait(bytes(d)),
            bluez={"use_start_notify": use_start_notify},
        )
        await device.tick()
        await device.tick()
        await asyncio.wait_for(gone.wait(), WAIT)
        assert not client.is_connected and not device.connected
        if use_start_notify:  # signals on one connection keep their order
            assert got.qsize() == 2
        else:  # the socket may be read after the disconnect; both still arrive
            await eventually(lambda: got.qsize() >= 2, within_s=WAIT, what="both notifications")
        await client.disconnect()


async def test_faults_from_the_packaged_scenario_reach_bleak(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from firmware_sim.cli import scenario_path

    fleet = build_fleet(scenario=scenario_path("faults"))
    async with fake_bluez(fleet) as sim:
        use_fake_bluez(monkeypatch, sim.address, tmp_path)
        visible = {d.name for d in fleet.devices if d.visible}
        assert "SIM-HR-GHOST" not in visible
        seen = await scan(visible)
        assert "SIM-HR-GHOST" not in seen  # announced together with the rest if it could be

        connfail = fleet.get("SIM-HR-CONNFAIL")
        async with BleakClient(seen["SIM-HR-CONNFAIL"], timeout=WAIT) as client:
            assert client.is_connected  # bleak retried the two aborted connects
        assert connfail.connections == 1

        for name, error in (
            ("SIM-GLU-NOPAIR", "org.bluez.Error.AuthenticationRejected"),
            ("SIM-GLU-BADPIN", "org.bluez.Error.AuthenticationFailed"),
        ):
            with pytest.raises(BleakDBusError) as info:
                await BleakClient(seen[name], pair=True, timeout=WAIT).connect()
            assert info.value.dbus_error == error
            assert not fleet.get(name).paired


async def test_acquire_notify_is_for_notify_characteristics_only_as_in_bluetoothd(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    racp_uuid = uuid16(0x2A52)  # write + indicate
    async with (
        served(monkeypatch, tmp_path, "glucose:1") as (sim, fleet),
        raw_client(sim.address) as raw,
    ):
        meter = fleet.get("SIM-GLU-1")
        found = (await scan({"SIM-GLU-1"}))["SIM-GLU-1"]
        async with BleakClient(found, pair=True) as client:
            racp = client.services.get_characteristic(racp_uuid)
            measurement = client.services.get_characteristic(uuid16(0x2A18))
            assert racp is not None and measurement is not None
            assert "NotifyAcquired" not in racp.obj[1] and "Notifying" in racp.obj[1]
            assert "NotifyAcquired" in measurement.obj[1]
            iface = "org.bluez.GattCharacteristic1"
            reply = await raw.call(racp.obj[0], iface, "AcquireNotify", "a{sv}", {})
            assert reply.error_name == "org.bluez.Error.NotSupported"
            # bleak falls back to StartNotify for it even when asked for AcquireNotify
            how: BlueZNotifyArgs = {"use_start_notify": False}
            await client.start_notify(racp, lambda _c, _d: None, bluez=how)
            await client.start_notify(measurement, lambda _c, _d: None, bluez=how)
            assert meter.notifying(racp_uuid) and meter.notifying(uuid16(0x2A18))
            # StopNotify from anyone releases an acquired socket (bluetoothd does the same)
            reply = await raw.call(measurement.obj[0], iface, "StopNotify")
            assert reply.message_type is MessageType.METHOD_RETURN
            assert not meter.notifying(uuid16(0x2A18))
            assert meter.notifying(racp_uuid)


async def test_write_command_is_sent_without_an_answer_as_bluetoothd_does(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async with served(monkeypatch, tmp_path, "hr:1") as (_sim, fleet):
        device = strap(fleet)
        device.energy_j = 500.0
        found = (await scan({"SIM-HR-1"}))["SIM-HR-1"]
        async with BleakClient(found) as client:
            # the control point takes write requests only; a command is sent anyway and the
            # strap drops it: no error comes back, and nothing is reset
            await client.write_gatt_char(uuid16(0x2A39), b"\x01", response=False)
            assert device.energy_j == 500.0
            await client.write_gatt_char(uuid16(0x2A39), b"\x01", response=True)
            assert device.energy_j == 0.0
