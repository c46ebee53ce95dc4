"""Adapters that wedge, come and go, as field reports describe them; and GATT ``Handle``."""

from __future__ import annotations

from pathlib import Path

import pytest
from bleak import BleakScanner
from bleak.exc import BleakDBusError
from dbus_fast import Variant

from edge.testing import eventually
from firmware_sim.cli import scenario_path
from firmware_sim.control import ControlClient
from firmware_sim.fleet import build_fleet
from tests.support.bluez import BlueZClient, error_of, fake_bluez, use_fake_bluez

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ADAPTER = "org.bluez.Adapter1"
DEVICE = "org.bluez.Device1"
WAIT = 10.0


async def test_gatt_objects_carry_their_attribute_handle() -> None:
    fleet = build_fleet(devices="glucose:1", seed=2)
    meter = fleet.devices[0]
    async with fake_bluez(fleet) as sim:
        client = await BlueZClient.connect(sim.address)
        try:
            path = await client.discover(sim, meter.address)
            assert error_of(await client.bluez(path, DEVICE, "Connect")) == (None, "")
            objects = await client.managed_objects()
        finally:
            client.close()
    gatt = {
        p: ifaces
        for p, ifaces in objects.items()
        if p.startswith(path + "/") and any(i.startswith("org.bluez.Gatt") for i in ifaces)
    }
    kinds = {p.rsplit("/", 1)[1][:-4] for p in gatt}
    assert kinds == {"service", "char", "desc"}
    for p, ifaces in gatt.items():
        (props,) = ifaces.values()
        assert props["Handle"] == int(p[-4:], 16), p
    # every characteristic's handle lies inside its service's range and after it
    for p, ifaces in gatt.items():
        if "org.bluez.GattCharacteristic1" in ifaces:
            service = ifaces["org.bluez.GattCharacteristic1"]["Service"]
            assert gatt[service]["org.bluez.GattService1"]["Handle"] < int(p[-4:], 16)


async def test_a_wedged_adapter_refuses_discovery_until_power_cycled(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fleet = build_fleet(devices="hr:1", seed=2)
    strap = fleet.devices[0]
    async with fake_bluez(fleet, control=True) as sim, ControlClient(sim.address) as ctl:
        use_fake_bluez(monkeypatch, sim.address, tmp_path)
        client = await BlueZClient.connect(sim.address)
        try:
            hci0 = sim.bluez.adapter.path
            assert (await ctl.wedge_adapter("hci0"))["wedged"] == "in_progress"
            for _ in range(2):  # retrying does not help
                reply = await client.bluez(hci0, ADAPTER, "StartDiscovery")
                assert error_of(reply)[0] == "org.bluez.Error.InProgress"
            with pytest.raises(BleakDBusError) as info:
                async with BleakScanner():
                    pass
            assert info.value.dbus_error == "org.bluez.Error.InProgress"

            # the recovery: Powered false -> true
            assert error_of(await client.set_prop(hci0, ADAPTER, "Powered", Variant("b", False)))[
                0
            ] is None
            assert await client.prop(hci0, ADAPTER, "Powered") is False
            assert await client.prop(hci0, ADAPTER, "PowerState") == "off"
            reply = await client.bluez(hci0, ADAPTER, "StartDiscovery")
            assert error_of(reply)[0] == "org.bluez.Error.NotReady"
            await client.set_prop(hci0, ADAPTER, "Powered", Variant("b", True))
            assert (hci0, {"Powered": True, "PowerState": "on"}) in client.changes
            assert (await ctl.list_adapters())[0]["wedged"] is None
            found = await BleakScanner.find_device_by_address(strap.address, timeout=WAIT)
            assert found is not None
        finally:
            client.close()


async def test_a_silently_wedged_adapter_reports_nothing_while_another_one_does() -> None:
    fleet = build_fleet(devices="hr:1", seed=2)
    strap = fleet.devices[0]
    async with fake_bluez(fleet, control=True) as sim, ControlClient(sim.address) as ctl:
        client = await BlueZClient.connect(sim.address)
        try:
            await ctl.add_adapter("hci1")
            await ctl.wedge_adapter("hci0", "silent")
            for name in ("hci0", "hci1"):
                path = f"/org/bluez/{name}"
                assert error_of(await client.bluez(path, ADAPTER, "StartDiscovery")) == (None, "")
                assert await client.prop(path, ADAPTER, "Discovering") is True
            on_hci1 = sim.bluez.device_path(strap.address, "hci1")
            await eventually(
                lambda: sim.bluez.is_exported(on_hci1), within_s=WAIT, what="seen on hci1"
            )
            assert not sim.bluez.is_exported(sim.bluez.device_path(strap.address))
            assert all(not p.startswith("/org/bluez/hci0/") for p, _i in client.added)
        finally:
            client.close()


async def test_adapters_are_unplugged_and_plugged_at_run_time() -> None:
    fleet = build_fleet(devices="hr:1", seed=2)
    strap = fleet.devices[0]
    async with fake_bluez(fleet, control=True) as sim, ControlClient(sim.address) as ctl:
        client = await BlueZClient.connect(sim.address)
        try:
            added = await ctl.add_adapter("hci1", "00:1A:7D:DA:71:99")
            assert added["address"] == "00:1A:7D:DA:71:99"
            assert ("/org/bluez/hci1", [ADAPTER]) in client.added
            objects = await client.managed_objects()
            assert objects["/org/bluez/hci1"][ADAPTER]["Address"] == "00:1A:7D:DA:71:99"
            assert "central" in objects["/org/bluez/hci1"][ADAPTER]["Roles"]

            path = await client.discover_on(sim, strap.address, "hci1")
            assert error_of(await client.bluez(path, DEVICE, "Connect")) == (None, "")
            assert strap.connected
            await ctl.remove_adapter("hci1")
            assert ("/org/bluez/hci1", [ADAPTER]) in client.removed
            assert any(p == path for p, _i in client.removed)
            await eventually(lambda: not strap.connected, within_s=WAIT, what="link dropped")
            assert "/org/bluez/hci1" not in await client.managed_objects()
            assert [a["name"] for a in await ctl.list_adapters()] == ["hci0"]
            # the device is still there for the adapter that stayed
            assert (await client.discover(sim, strap.address)).startswith("/org/bluez/hci0/")
        finally:
            client.close()


async def test_the_adapters_scenario_brings_a_second_wedged_adapter() -> None:
    scenario = scenario_path("adapters")
    assert scenario is not None
    fleet = build_fleet(scenario=scenario)
    meter = fleet.get("SIM-GLU-PASSKEY")
    assert (meter.pairing.method.value, meter.pairing.passkey) == ("passkey", 246810)
    async with fake_bluez(fleet) as sim:
        client = await BlueZClient.connect(sim.address)
        try:
            objects = await client.managed_objects()
            assert objects["/org/bluez/hci1"][ADAPTER]["Address"] == "00:1A:7D:DA:71:14"
            reply = await client.bluez("/org/bluez/hci1", ADAPTER, "StartDiscovery")
            assert error_of(reply)[0] == "org.bluez.Error.InProgress"
            reply = await client.bluez("/org/bluez/hci0", ADAPTER, "StartDiscovery")
            assert error_of(reply) == (None, "")
        finally:
            client.close()
