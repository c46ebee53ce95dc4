"""Pairing in the in-process double: the agent is asked as bluetoothd asks it, and a pairing
ends with BlueZ's errors (as bleak raises them). The conformance suite runs the common cases
on both front ends; these are the ones only the double can run on virtual time."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from bleak.exc import BleakDBusError

from edge.ble.agent_policy import PairingPolicy
from firmware_sim.devices.base import SimDevice
from firmware_sim.fleet import build_fleet
from firmware_sim.inprocess import AgentSaidNo, PolicyAgent, SimBleak
from firmware_sim.model.clock import ManualClock

SPEC = "glucose:1:pairing=passkey:passkey=123456,hr:1:pairing=numeric_comparison"
ERR = "org.bluez.Error."


@dataclass
class Scripted:
    """An agent with a set capability that answers (or never answers) as told."""

    capability: str = "KeyboardDisplay"
    passkey: int | None = None
    confirm: bool | None = None
    hang: bool = False
    #: type the code this device displays (a person reading it off the device)
    reads: SimDevice | None = None
    asked: list[tuple[str, str, int | None]] = field(default_factory=list)
    withdrawn: bool = False

    async def _wait(self) -> None:
        if self.hang:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.withdrawn = True
                raise

    async def request_passkey(self, device_path: str) -> int:
        self.asked.append(("RequestPasskey", device_path, None))
        await self._wait()
        if self.reads is not None and self.reads.displayed_code is not None:
            return self.reads.displayed_code
        if self.passkey is None:
            raise AgentSaidNo(canceled=True)
        return self.passkey

    async def request_confirmation(self, device_path: str, code: int) -> None:
        self.asked.append(("RequestConfirmation", device_path, code))
        await self._wait()
        if not self.confirm:
            raise AgentSaidNo()


def rig() -> tuple[SimBleak, SimDevice, SimDevice]:
    fleet = build_fleet(devices=SPEC, seed=3, clock=ManualClock(autojump=True))
    meter, strap = fleet.get("SIM-GLU-1"), fleet.get("SIM-HR-1")
    return SimBleak(fleet, agent_timeout_s=30.0), meter, strap


async def pair(sim: SimBleak, device: SimDevice) -> str | None:
    client = sim.Client(device.address)
    try:
        await client.pair()
    except BleakDBusError as exc:
        return exc.dbus_error.removeprefix(ERR)
    return None


async def test_the_passkey_request_names_the_device_path_and_bonds() -> None:
    sim, meter, _ = rig()
    sim.agent = agent = Scripted(passkey=123456)
    assert await pair(sim, meter) is None
    path = f"/org/bluez/hci0/dev_{meter.address.replace(':', '_')}"
    assert agent.asked == [("RequestPasskey", path, None)]
    assert meter.paired


async def test_numeric_comparison_shows_the_devices_code() -> None:
    sim, _, strap = rig()
    sim.agent = agent = Scripted(confirm=True)
    assert await pair(sim, strap) is None
    ((method, _path, code),) = agent.asked
    assert method == "RequestConfirmation" and code is not None and 0 <= code <= 999_999
    assert strap.paired


async def test_a_keyboard_only_agent_types_the_numeric_comparison_code() -> None:
    sim, _, strap = rig()
    # asked for a passkey, the person types the code the strap displays
    sim.agent = agent = Scripted(capability="KeyboardOnly", reads=strap)
    assert await pair(sim, strap) is None
    assert [a[0] for a in agent.asked] == ["RequestPasskey"]
    assert strap.paired


async def test_a_keyboard_only_agent_typing_another_code_fails() -> None:
    sim, _, strap = rig()
    sim.agent = Scripted(capability="KeyboardOnly", passkey=1)
    assert await pair(sim, strap) == "AuthenticationFailed"
    assert not strap.paired


async def test_an_agent_that_never_answers_times_out_and_is_withdrawn() -> None:
    sim, meter, _ = rig()
    sim.agent = agent = Scripted(hang=True)
    assert await pair(sim, meter) == "AuthenticationTimeout"
    assert agent.withdrawn and not meter.paired


async def test_the_agent_cancelling_is_authentication_canceled() -> None:
    sim, meter, _ = rig()
    sim.agent = Scripted(passkey=None)
    assert await pair(sim, meter) == "AuthenticationCanceled"
    assert not meter.paired


async def test_the_device_cancelling_withdraws_the_question() -> None:
    sim, meter, _ = rig()
    meter.inject_fault({"pairing_refused": "canceled"})
    sim.agent = agent = Scripted(hang=True)
    assert await pair(sim, meter) == "AuthenticationCanceled"
    assert agent.withdrawn and not meter.paired


@pytest.mark.parametrize(("agent", "expected"), [
    (None, "AuthenticationFailed"),  # no agent: only just works can bond
    (Scripted(capability="NoInputNoOutput", passkey=123456), "AuthenticationFailed"),
    (Scripted(capability="DisplayOnly", passkey=123456), "AuthenticationFailed"),
])
async def test_a_passkey_meter_needs_an_agent_that_can_type(
    agent: Scripted | None, expected: str
) -> None:
    sim, meter, _ = rig()
    sim.agent = agent
    assert await pair(sim, meter) == expected
    assert agent is None or agent.asked == []


async def test_the_gateways_policy_rejects_a_passkey_it_has_no_answer_for() -> None:
    sim, meter, _ = rig()
    sim.agent = agent = PolicyAgent(PairingPolicy(meter.address))  # no passkey, no terminal
    assert await pair(sim, meter) == "AuthenticationFailed"
    assert [a[0] for a in agent.asked] == ["RequestPasskey"]
    assert not meter.paired
