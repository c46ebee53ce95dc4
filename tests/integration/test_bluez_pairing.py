"""Pairing through agents, as bluetoothd does it: which Agent1 method is called for which
device and agent capability, the errors Pair ends with, no half-made bonds, and lost bonds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from bleak import BleakClient, BleakScanner
from bleak.exc import BleakDBusError
from dbus_fast import Message

from edge.testing import eventually
from firmware_sim.bluez import BlueZOptions
from firmware_sim.control import ControlClient
from firmware_sim.fleet import Fleet, build_fleet
from tests.support.bluez import (
    BlueZClient,
    RecordingAgent,
    SimBus,
    error_of,
    fake_bluez,
    use_fake_bluez,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

DEVICE = "org.bluez.Device1"
ADAPTER = "org.bluez.Adapter1"
AGENTS = "org.bluez.AgentManager1"
PASSKEY = 123456
ERR = "org.bluez.Error"
SPEC = (
    "glucose:1:pairing=passkey:passkey=123456,"
    "hr:1:pairing=numeric_comparison,"
    "hr:1:pairing=just_works"
)


@asynccontextmanager
async def rig(
    spec: str = SPEC, options: BlueZOptions | None = None
) -> AsyncIterator[tuple[Fleet, SimBus, BlueZClient]]:
    fleet = build_fleet(devices=spec, seed=5)
    async with fake_bluez(fleet, options=options, control=True) as sim:
        client = await BlueZClient.connect(sim.address)
        try:
            yield fleet, sim, client
        finally:
            client.close()


async def pair(client: BlueZClient, path: str) -> tuple[str | None, str]:
    return error_of(await client.bluez(path, DEVICE, "Pair"))


async def bond_state(client: BlueZClient, path: str) -> tuple[bool, bool]:
    return (
        await client.prop(path, DEVICE, "Paired"),
        await client.prop(path, DEVICE, "Bonded"),
    )


async def test_passkey_device_asks_the_agent_for_the_passkey_and_bonds() -> None:
    async with rig() as (fleet, sim, client):
        agent = RecordingAgent(passkey=PASSKEY)
        await client.register_agent(agent, "KeyboardDisplay")
        meter = fleet.get("SIM-GLU-1")
        path = await client.discover(sim, meter.address)
        assert await pair(client, path) == (None, "")
        assert agent.calls == [("RequestPasskey", path)]
        assert await bond_state(client, path) == (True, True)
        assert meter.paired
        assert (path, {"Paired": True, "Bonded": True}) in client.changes
        # bluetoothd leaves Trusted to the client
        assert await client.prop(path, DEVICE, "Trusted") is False
        assert error_of(await client.bluez(path, DEVICE, "Pair"))[0] == (
            "org.bluez.Error.AlreadyExists"
        )


@pytest.mark.parametrize(
    ("agent", "expected"),
    [
        (RecordingAgent(passkey=654321), f"{ERR}.AuthenticationFailed"),
        (RecordingAgent(error=f"{ERR}.Rejected"), f"{ERR}.AuthenticationFailed"),
        (RecordingAgent(error=f"{ERR}.Canceled"), f"{ERR}.AuthenticationCanceled"),
    ],
    ids=["wrong-passkey", "agent-rejects", "agent-cancels"],
)
async def test_a_failed_passkey_pairing_leaves_no_bond(
    agent: RecordingAgent, expected: str
) -> None:
    async with rig() as (fleet, sim, client):
        await client.register_agent(agent, "KeyboardOnly")
        meter = fleet.get("SIM-GLU-1")
        path = await client.discover(sim, meter.address)
        name, _text = await pair(client, path)
        assert name == expected
        assert agent.calls == [("RequestPasskey", path)]
        assert await bond_state(client, path) == (False, False)
        assert not meter.paired
        assert not any("Paired" in changed for _p, changed in client.changes)
        # and the right answer afterwards still bonds
        agent.passkey, agent.error = PASSKEY, None
        assert await pair(client, path) == (None, "")
        assert meter.paired


async def test_numeric_comparison_shows_the_devices_code_to_the_agent() -> None:
    async with rig() as (fleet, sim, client):
        agent = RecordingAgent(confirm=True)
        await client.register_agent(agent, "DisplayYesNo")
        strap = fleet.get("SIM-HR-1")
        path = await client.discover(sim, strap.address)
        assert await pair(client, path) == (None, "")
        ((member, device, code),) = agent.calls
        assert (member, device) == ("RequestConfirmation", path)
        assert 0 <= code <= 999_999
        assert strap.paired


async def test_numeric_comparison_refused_by_the_agent_fails() -> None:
    async with rig() as (fleet, sim, client):
        agent = RecordingAgent(confirm=False)
        await client.register_agent(agent, "KeyboardDisplay")
        strap = fleet.get("SIM-HR-1")
        path = await client.discover(sim, strap.address)
        assert (await pair(client, path))[0] == "org.bluez.Error.AuthenticationFailed"
        assert [c[0] for c in agent.calls] == ["RequestConfirmation"]
        assert await bond_state(client, path) == (False, False)


async def test_a_keyboard_only_host_types_the_numeric_comparison_code() -> None:
    async with rig() as (fleet, sim, client):
        strap = fleet.get("SIM-HR-1")

        class TypesWhatTheDeviceShows(RecordingAgent):
            async def _answer(self) -> None:
                code = strap.displayed_code
                assert code is not None
                self.passkey = code

        agent = TypesWhatTheDeviceShows()
        await client.register_agent(agent, "KeyboardOnly")
        path = await client.discover(sim, strap.address)
        assert await pair(client, path) == (None, "")
        assert agent.calls == [("RequestPasskey", path)]
        assert strap.paired


@pytest.mark.parametrize("capability", [None, "NoInputNoOutput", "DisplayOnly", "DisplayYesNo"])
async def test_a_passkey_device_cannot_bond_without_a_keyboard_agent(
    capability: str | None,
) -> None:
    async with rig() as (fleet, sim, client):
        agent = RecordingAgent(passkey=PASSKEY)
        if capability is not None:
            await client.register_agent(agent, capability)
        meter = fleet.get("SIM-GLU-1")
        path = await client.discover(sim, meter.address)
        assert await pair(client, path) == (
            "org.bluez.Error.AuthenticationFailed",
            "Authentication Failed",
        )
        assert agent.calls == []
        assert await bond_state(client, path) == (False, False)


async def test_just_works_asks_no_agent() -> None:
    async with rig() as (fleet, sim, client):
        agent = RecordingAgent()
        await client.register_agent(agent, "KeyboardDisplay")
        strap = fleet.get("SIM-HR-2")
        path = await client.discover(sim, strap.address)
        assert await pair(client, path) == (None, "")
        assert agent.calls == []
        assert await bond_state(client, path) == (True, True)


async def test_an_agent_that_never_answers_times_out_and_is_cancelled() -> None:
    async with rig(options=BlueZOptions(agent_timeout=0.2)) as (fleet, sim, client):
        agent = RecordingAgent(hang=True)
        await client.register_agent(agent, "KeyboardDisplay")
        meter = fleet.get("SIM-GLU-1")
        path = await client.discover(sim, meter.address)
        assert await pair(client, path) == (
            "org.bluez.Error.AuthenticationTimeout",
            "Authentication Timeout",
        )
        await eventually(lambda: agent.canceled.is_set(), within_s=10, what="Agent1.Cancel")
        assert client.agent_calls == ["RequestPasskey", "Cancel"]
        assert await bond_state(client, path) == (False, False)


async def test_the_device_cancelling_withdraws_the_agents_prompt() -> None:
    async with rig() as (fleet, sim, client):
        agent = RecordingAgent(passkey=PASSKEY)
        await client.register_agent(agent, "KeyboardDisplay")
        meter = fleet.get("SIM-GLU-1")
        meter.inject_fault({"pairing_refused": "canceled"})
        path = await client.discover(sim, meter.address)
        assert (await pair(client, path))[0] == "org.bluez.Error.AuthenticationCanceled"
        await eventually(lambda: agent.canceled.is_set(), within_s=10, what="Agent1.Cancel")
        assert client.agent_calls == ["RequestPasskey", "Cancel"]
        assert not meter.paired


async def test_cancel_pairing_while_the_agent_is_asked() -> None:
    async with rig() as (fleet, sim, client):
        agent = RecordingAgent(hang=True)
        await client.register_agent(agent, "KeyboardDisplay")
        meter = fleet.get("SIM-GLU-1")
        path = await client.discover(sim, meter.address)
        task = asyncio.ensure_future(
            client.bus.call(
                Message(destination="org.bluez", path=path, interface=DEVICE, member="Pair")
            )
        )
        await eventually(lambda: bool(agent.calls), within_s=10, what="the agent asked")
        assert error_of(await client.bluez(path, DEVICE, "CancelPairing")) == (None, "")
        reply = await asyncio.wait_for(task, 10)
        assert reply is not None
        assert error_of(reply)[0] == "org.bluez.Error.AuthenticationCanceled"
        await eventually(lambda: agent.canceled.is_set(), within_s=10, what="Agent1.Cancel")
        assert await bond_state(client, path) == (False, False)


async def test_agent_manager_rules() -> None:
    async with rig() as (fleet, sim, client):
        agent = RecordingAgent(passkey=PASSKEY)
        missing = await client.bluez("/org/bluez", AGENTS, "RequestDefaultAgent", "o", "/nope")
        assert error_of(missing)[0] == "org.bluez.Error.DoesNotExist"
        bad = await client.bluez("/org/bluez", AGENTS, "RegisterAgent", "os", "/a", "Telepathy")
        assert error_of(bad)[0] == "org.bluez.Error.InvalidArguments"
        await client.register_agent(agent, "")  # empty means KeyboardDisplay
        again = await client.bluez("/org/bluez", AGENTS, "RegisterAgent", "os", "/b", "")
        assert error_of(again)[0] == "org.bluez.Error.AlreadyExists"

        # another connection's Pair uses the default agent (ours)
        other = await BlueZClient.connect(sim.address)
        try:
            meter = fleet.get("SIM-GLU-1")
            path = await other.discover(sim, meter.address)
            assert await pair(other, path) == (None, "")
            assert agent.calls == [("RequestPasskey", path)]
        finally:
            other.close()

        # an agent leaves with its connection: no agent, no passkey bond
        client.close()
        third = await BlueZClient.connect(sim.address)
        try:
            second = build_fleet(devices="glucose:1:passkey=111111", seed=9).devices[0]
            fleet.add("glucose", name="SIM-GLU-9", address=second.address, passkey=111111)
            path = await third.discover(sim, second.address)
            await eventually(
                lambda: sim.bluez.agents.default is None, within_s=10, what="agent dropped"
            )
            assert (await pair(third, path))[0] == "org.bluez.Error.AuthenticationFailed"
        finally:
            third.close()


async def test_bleak_pairs_a_passkey_meter_through_a_default_agent(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async with rig() as (fleet, sim, client):
        use_fake_bluez(monkeypatch, sim.address, tmp_path)
        agent = RecordingAgent(passkey=PASSKEY)
        await client.register_agent(agent, "KeyboardDisplay")
        found = await BleakScanner.find_device_by_name("SIM-GLU-1", timeout=10)
        assert found is not None
        async with BleakClient(found) as ble:
            await ble.pair()
        assert fleet.get("SIM-GLU-1").paired
        assert [c[0] for c in agent.calls] == ["RequestPasskey"]


async def test_a_lost_bond_fails_every_connect_until_paired_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async with rig() as (fleet, sim, client):
        use_fake_bluez(monkeypatch, sim.address, tmp_path)
        agent = RecordingAgent(passkey=PASSKEY)
        await client.register_agent(agent, "KeyboardDisplay")
        meter = fleet.get("SIM-GLU-1")
        path = await client.discover(sim, meter.address)
        assert await pair(client, path) == (None, "")
        async with ControlClient(sim.address) as ctl:
            assert await ctl.forget_bond("SIM-GLU-1") is True
        assert not meter.paired
        # the hub still holds its half of the bond
        assert await bond_state(client, path) == (True, True)
        for _attempt in range(2):  # retrying does not help
            reply = await client.bluez(path, DEVICE, "Connect")
            assert error_of(reply) == ("org.bluez.Error.Failed", "le-connection-key-missing")
            assert await client.prop(path, DEVICE, "Connected") is False
        found = await BleakScanner.find_device_by_address(meter.address, timeout=10)
        assert found is not None
        with pytest.raises(BleakDBusError) as info:
            await BleakClient(found).connect()
        assert info.value.dbus_error == "org.bluez.Error.Failed"
        assert info.value.dbus_error_details == "le-connection-key-missing"

        # the fix: forget the device, find it again, pair again
        reply = await client.bluez(sim.bluez.adapter.path, ADAPTER, "RemoveDevice", "o", path)
        assert error_of(reply) == (None, "")
        path = await client.discover(sim, meter.address)
        assert await pair(client, path) == (None, "")
        assert error_of(await client.bluez(path, DEVICE, "Connect")) == (None, "")
        assert meter.paired and meter.connected
