"""The control interface (``com.edge.Sim1`` on the simulator's bus) as bleak sees its effects."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from bleak import BleakClient, BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

from edge.testing import eventually
from firmware_sim.control import ControlClient, ControlError
from firmware_sim.devices.glucose import GlucoseMeter
from firmware_sim.fleet import build_fleet
from tests.support.bluez import fake_bluez, use_fake_bluez

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

WAIT = 10.0


async def test_devices_added_and_removed_at_run_time_come_and_go_on_the_bus(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fleet = build_fleet(devices="hr:1", seed=8)
    async with fake_bluez(fleet, control=True) as sim:
        use_fake_bluez(monkeypatch, sim.address, tmp_path)
        names: asyncio.Queue[str] = asyncio.Queue()

        def detected(_d: BLEDevice, adv: AdvertisementData) -> None:
            names.put_nowait(adv.local_name or "")

        async with ControlClient(sim.address) as ctl, BleakScanner(detected) as scanner:
            assert await asyncio.wait_for(names.get(), WAIT) == "SIM-HR-1"
            added = await ctl.add_device("glucose", history=3)
            assert added["name"] == "SIM-GLU-1"
            async with asyncio.timeout(WAIT):
                while await names.get() != "SIM-GLU-1":
                    pass
            await ctl.remove_device("SIM-GLU-1")
            assert [d["name"] for d in await ctl.list_devices()] == ["SIM-HR-1"]
            # removal arrives as InterfacesRemoved; bleak has no callback for it
            await eventually(
                lambda: all(d.name != "SIM-GLU-1" for d in scanner.discovered_devices),
                within_s=WAIT,
                what="the removed device gone from the scanner",
            )


async def test_control_errors_have_their_own_names(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fleet = build_fleet(devices="hr:1,glucose:1", seed=8)
    async with fake_bluez(fleet, control=True) as sim, ControlClient(sim.address) as ctl:
        with pytest.raises(ControlError) as info:
            await ctl.drop_link("SIM-NOPE-1")
        assert info.value.name == "com.edge.Sim.Error.NoSuchDevice"
        with pytest.raises(ControlError) as info:
            await ctl.inject_fault("SIM-HR-1", {"no_such_fault": 1})
        assert info.value.name == "com.edge.Sim.Error.InvalidArguments"
        with pytest.raises(ControlError) as info:
            await ctl.set_heart_rate("SIM-GLU-1", 80)
        assert info.value.name == "com.edge.Sim.Error.NotSupported"
        with pytest.raises(ControlError) as info:
            await ctl.add_device("toaster")
        assert info.value.name == "com.edge.Sim.Error.InvalidArguments"
        assert await ctl.drop_link("SIM-HR-1") is False  # not connected


async def test_control_object_is_on_its_own_connection_not_in_bluez_objects(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fleet = build_fleet(devices="hr:1", seed=8)
    async with fake_bluez(fleet, control=True) as sim:
        bus = await MessageBus(bus_address=sim.address, bus_type=BusType.SYSTEM).connect()
        try:
            reply = await bus.call(
                Message(
                    destination="org.bluez",
                    path="/",
                    interface="org.freedesktop.DBus.ObjectManager",
                    member="GetManagedObjects",
                )
            )
        finally:
            bus.disconnect()
        assert reply.message_type is MessageType.METHOD_RETURN
        assert all(path.startswith("/org/bluez") for path in reply.body[0])


async def test_glucose_record_fault_and_visibility_through_control_reach_bleak(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fleet = build_fleet(devices="hr:1,glucose:1", seed=8)
    meter = fleet.get("SIM-GLU-1")
    assert isinstance(meter, GlucoseMeter)
    async with fake_bluez(fleet, control=True) as sim, ControlClient(sim.address) as ctl:
        use_fake_bluez(monkeypatch, sim.address, tmp_path)
        before = len(meter.records)
        seq = await ctl.add_glucose_record(
            "SIM-GLU-1", concentration="6.2", unit="mmol/L", base_time="2026-01-01T08:00:00"
        )
        assert [r.sequence for r in meter.records][-1] == seq
        assert len(meter.records) == before + 1
        plan = await ctl.inject_fault("SIM-GLU-1", {"pairing_refused": "failed"})
        assert plan == {"pairing_refused": "failed"}
        await ctl.clear_faults("SIM-GLU-1")
        assert meter.faults.pairing_refused is None

        await ctl.set_visible("SIM-GLU-1", False)
        strap = await BleakScanner.find_device_by_name("SIM-HR-1", timeout=WAIT)
        assert strap is not None
        # both are announced together when a scan starts, so the meter would be known by now
        seen = await BleakScanner.discover(timeout=0, return_adv=True)
        names = {adv.local_name for _d, adv in seen.values()}
        assert "SIM-HR-1" in names
        assert "SIM-GLU-1" not in names
        await ctl.set_visible("SIM-GLU-1", True)
        found = await BleakScanner.find_device_by_name("SIM-GLU-1", timeout=WAIT)
        assert found is not None
        async with BleakClient(found, pair=True) as client:
            assert client.is_connected
            assert meter.paired


async def test_removing_a_connected_device_disconnects_its_client(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fleet = build_fleet(devices="hr:1", seed=8)
    async with fake_bluez(fleet, control=True) as sim, ControlClient(sim.address) as ctl:
        use_fake_bluez(monkeypatch, sim.address, tmp_path)
        found = await BleakScanner.find_device_by_name("SIM-HR-1", timeout=WAIT)
        assert found is not None
        gone = asyncio.Event()
        client = BleakClient(found, disconnected_callback=lambda _c: gone.set())
        await client.connect()
        await ctl.remove_device("SIM-HR-1")
        await asyncio.wait_for(gone.wait(), WAIT)
        assert not client.is_connected
        assert await ctl.list_devices() == []
