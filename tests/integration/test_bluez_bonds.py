"""Bonds per adapter in the fake BlueZ, as in real BlueZ: a bond is a property of (adapter,
device). A meter bonded through hci0 is unbonded on hci1 and must pair again there;
RemoveDevice on one adapter leaves the other adapter's bond; ``forget-bond`` (the device lost
its keys) breaks every bond."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from firmware_sim.control import ControlClient
from firmware_sim.fleet import Fleet, build_fleet
from firmware_sim.model.contract import Security
from tests.support.bluez import BlueZClient, RecordingAgent, SimBus, error_of, fake_bluez

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

DEVICE = "org.bluez.Device1"
ADAPTER = "org.bluez.Adapter1"
CHAR = "org.bluez.GattCharacteristic1"
PASSKEY = 123456
SPEC = "glucose:1:pairing=passkey:passkey=123456"
KEY_MISSING = ("org.bluez.Error.Failed", "le-connection-key-missing")


@asynccontextmanager
async def rig() -> AsyncIterator[tuple[Fleet, SimBus, BlueZClient, ControlClient, RecordingAgent]]:
    """A passkey meter, hci0 and hci1, a raw D-Bus client with a keyboard agent."""
    fleet = build_fleet(devices=SPEC, seed=7)
    async with fake_bluez(fleet, control=True) as sim, ControlClient(sim.address) as ctl:
        await ctl.add_adapter("hci1")
        client = await BlueZClient.connect(sim.address)
        try:
            agent = RecordingAgent(passkey=PASSKEY)
            await client.register_agent(agent, "KeyboardDisplay")
            yield fleet, sim, client, ctl, agent
        finally:
            client.close()


def encrypted_char(sim: SimBus, address: str, adapter: str) -> str:
    """The object path of an encrypted notifying characteristic of the device on ``adapter``."""
    (node,) = [n for n in sim.bluez.registry.nodes_of(address) if n.adapter.name == adapter]
    for char in node.characteristics.values():
        if char.spec.security is Security.ENCRYPTED and char.can_notify:
            return char.path
    raise AssertionError("no encrypted characteristic")


async def paired(client: BlueZClient, path: str) -> bool:
    return bool(await client.prop(path, DEVICE, "Paired"))


async def bond_on_both(client: BlueZClient, sim: SimBus, address: str) -> dict[str, str]:
    """Pair the device through hci0 and through hci1 (then disconnect); its path on each."""
    paths = {}
    for adapter in ("hci0", "hci1"):
        paths[adapter] = await client.discover_on(sim, address, adapter)
        assert error_of(await client.bluez(paths[adapter], DEVICE, "Pair")) == (None, "")
        assert error_of(await client.bluez(paths[adapter], DEVICE, "Disconnect")) == (None, "")
    return paths


async def bonded_on(ctl: ControlClient, address: str) -> set[str]:
    return {str(a["name"]) for a in await ctl.list_adapters() if address in a["bonded"]}


async def test_a_bond_made_through_hci0_is_not_one_on_hci1() -> None:
    async with rig() as (fleet, sim, client, ctl, agent):
        meter = fleet.devices[0]
        on0 = await client.discover_on(sim, meter.address, "hci0")
        assert error_of(await client.bluez(on0, DEVICE, "Pair")) == (None, "")
        assert await bonded_on(ctl, meter.address) == {"hci0"}
        assert error_of(await client.bluez(on0, DEVICE, "Disconnect")) == (None, "")

        on1 = await client.discover_on(sim, meter.address, "hci1")
        assert on1.startswith("/org/bluez/hci1/")
        assert await paired(client, on1) is False
        # the link through hci1 comes up but is not encrypted: encrypted GATT is refused
        assert error_of(await client.bluez(on1, DEVICE, "Connect")) == (None, "")
        name, _ = error_of(await client.bluez(encrypted_char(sim, meter.address, "hci1"),
                                              CHAR, "StartNotify"))
        assert name == "org.bluez.Error.NotPermitted"
        # pairing through hci1 asks the agent again, and bonds there too
        assert error_of(await client.bluez(on1, DEVICE, "Pair")) == (None, "")
        assert [c for c in agent.calls if c[0] == "RequestPasskey"] == [
            ("RequestPasskey", on0), ("RequestPasskey", on1)]
        assert await paired(client, on1) is True
        assert error_of(await client.bluez(encrypted_char(sim, meter.address, "hci1"),
                                           CHAR, "StartNotify")) == (None, "")
        assert await bonded_on(ctl, meter.address) == {"hci0", "hci1"}


async def test_a_wrong_passkey_on_the_second_adapter_leaves_the_first_bond() -> None:
    async with rig() as (fleet, sim, client, ctl, agent):
        meter = fleet.devices[0]
        on0 = await client.discover_on(sim, meter.address, "hci0")
        assert error_of(await client.bluez(on0, DEVICE, "Pair")) == (None, "")
        await client.bluez(on0, DEVICE, "Disconnect")
        on1 = await client.discover_on(sim, meter.address, "hci1")
        agent.passkey = 654321
        name, _ = error_of(await client.bluez(on1, DEVICE, "Pair"))
        assert name == "org.bluez.Error.AuthenticationFailed"
        assert await paired(client, on1) is False
        await client.bluez(on1, DEVICE, "Disconnect")
        assert await bonded_on(ctl, meter.address) == {"hci0"}
        assert error_of(await client.bluez(on0, DEVICE, "Connect")) == (None, "")
        assert meter.paired and meter.connected


async def test_remove_device_on_one_adapter_leaves_the_other_adapters_bond() -> None:
    async with rig() as (fleet, sim, client, ctl, _agent):
        meter = fleet.devices[0]
        paths = await bond_on_both(client, sim, meter.address)
        reply = await client.bluez("/org/bluez/hci0", ADAPTER, "RemoveDevice", "o", paths["hci0"])
        assert error_of(reply) == (None, "")
        assert await bonded_on(ctl, meter.address) == {"hci1"}
        assert meter.paired  # the device keeps its bond with hci1
        assert error_of(await client.bluez(paths["hci1"], DEVICE, "Connect")) == (None, "")
        assert error_of(await client.bluez(encrypted_char(sim, meter.address, "hci1"),
                                           CHAR, "StartNotify")) == (None, "")
        await client.bluez(paths["hci1"], DEVICE, "Disconnect")
        # removing the last bond unpairs the device
        reply = await client.bluez("/org/bluez/hci1", ADAPTER, "RemoveDevice", "o", paths["hci1"])
        assert error_of(reply) == (None, "")
        assert not meter.paired
        assert await bonded_on(ctl, meter.address) == set()


async def test_forget_bond_breaks_the_bond_on_every_adapter() -> None:
    async with rig() as (fleet, sim, client, ctl, _agent):
        meter = fleet.devices[0]
        paths = await bond_on_both(client, sim, meter.address)
        assert await ctl.forget_bond(meter.name) is True
        # the hub keeps both halves; neither works any more
        assert await bonded_on(ctl, meter.address) == {"hci0", "hci1"}
        for adapter in ("hci0", "hci1"):
            assert error_of(await client.bluez(paths[adapter], DEVICE, "Connect")) == KEY_MISSING
        # pairing again through hci0 fixes hci0 only
        reply = await client.bluez("/org/bluez/hci0", ADAPTER, "RemoveDevice", "o", paths["hci0"])
        assert error_of(reply) == (None, "")
        on0 = await client.discover_on(sim, meter.address, "hci0")
        assert error_of(await client.bluez(on0, DEVICE, "Pair")) == (None, "")
        await client.bluez(on0, DEVICE, "Disconnect")
        assert error_of(await client.bluez(paths["hci1"], DEVICE, "Connect")) == KEY_MISSING


async def test_an_adapter_plugged_in_later_holds_no_bonds() -> None:
    async with rig() as (fleet, sim, client, ctl, _agent):
        meter = fleet.devices[0]
        on0 = await client.discover_on(sim, meter.address, "hci0")
        assert error_of(await client.bluez(on0, DEVICE, "Pair")) == (None, "")
        await ctl.add_adapter("hci2")
        assert await bonded_on(ctl, meter.address) == {"hci0"}
        # bonded devices are on the bus at once on their bonding adapter only
        objects = await client.managed_objects()
        assert sim.bluez.device_path(meter.address, "hci2") not in objects
        on2 = await client.discover_on(sim, meter.address, "hci2")
        assert await paired(client, on2) is False


async def test_the_same_dongle_plugged_back_brings_its_bonds_another_does_not() -> None:
    async with rig() as (fleet, sim, client, ctl, _agent):
        meter = fleet.devices[0]
        on1 = await client.discover_on(sim, meter.address, "hci1")
        assert error_of(await client.bluez(on1, DEVICE, "Pair")) == (None, "")
        await client.bluez(on1, DEVICE, "Disconnect")
        address = next(a["address"] for a in await ctl.list_adapters() if a["name"] == "hci1")
        await ctl.remove_adapter("hci1")
        await ctl.add_adapter("hci1", str(address))
        assert await bonded_on(ctl, meter.address) == {"hci1"}
        assert on1 in await client.managed_objects()  # bonded: on the bus at once
        assert error_of(await client.bluez(on1, DEVICE, "Connect")) == (None, "")
        assert error_of(await client.bluez(encrypted_char(sim, meter.address, "hci1"),
                                           CHAR, "StartNotify")) == (None, "")
        await client.bluez(on1, DEVICE, "Disconnect")
        await ctl.remove_adapter("hci1")
        await ctl.add_adapter("hci1", "00:1A:7D:DA:71:42")  # another dongle, same name
        assert await bonded_on(ctl, meter.address) == set()
