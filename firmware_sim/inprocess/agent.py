"""Pairing in the in-process double, with the fake BlueZ's semantics but no D-Bus.

bluetoothd asks the agent registered on the bus; the double asks a :class:`SimAgent` set on
its :class:`~firmware_sim.inprocess.binding.SimBleak` (``sim.agent = ...``). Which request is
made follows the device's pairing method and the agent's IO capability
(:func:`firmware_sim.model.pairing.association`), and a pairing ends with the errors
``Device1.Pair`` ends with: ``AuthenticationFailed`` (wrong passkey, the agent said no),
``AuthenticationCanceled`` (the agent or the device cancelled), ``AuthenticationTimeout`` (no
answer in time). :class:`PolicyAgent` answers with the gateway's own pure policy
(:mod:`edge.ble.agent_policy`), so a test drives both front ends with one policy.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from edge.ble.agent_policy import AgentRequest, Method, Policy, Verdict
from edge.clock import Clock, with_timeout
from firmware_sim.devices.base import SimDevice
from firmware_sim.errors import SimError
from firmware_sim.model.contract import PeripheralError, SimErrorCode
from firmware_sim.model.pairing import Association, association

#: how long bluetoothd waits for an agent's answer (its pairing timeout)
AGENT_TIMEOUT_S = 30.0


class AgentSaidNo(SimError):
    """The agent refused (``org.bluez.Error.Rejected``) or cancelled (``…Canceled``)."""

    def __init__(self, *, canceled: bool = False) -> None:
        super().__init__("canceled" if canceled else "rejected")
        self.canceled = canceled


class SimAgent(Protocol):
    """The double's ``Agent1``: an IO capability and the two requests LE pairing makes.
    Saying no is raising :class:`AgentSaidNo`."""

    @property
    def capability(self) -> str: ...

    async def request_passkey(self, device_path: str) -> int: ...

    async def request_confirmation(self, device_path: str, code: int) -> None: ...


class Prompter(Protocol):
    """The person asked when the policy says so (``edge.ble.agent.Prompter``'s shape)."""

    async def passkey(self) -> int | None: ...

    async def confirm(self, code: str) -> bool | None: ...


class PolicyAgent:
    """A :class:`SimAgent` answering as the gateway's agent does: ``policy`` decides, the
    ``prompter`` (if any) answers the questions the policy passes on; ``asked`` records the
    requests (method, device path), as the gateway's ``AgentLog`` does."""

    capability = "KeyboardDisplay"  # the gateway's (edge.ble.agent.CAPABILITY)

    def __init__(self, policy: Policy, prompter: Prompter | None = None) -> None:
        self.policy = policy
        self.prompter = prompter
        self.asked: list[tuple[str, str]] = []

    async def request_passkey(self, device_path: str) -> int:
        self.asked.append((Method.REQUEST_PASSKEY.value, device_path))
        decision = self.policy.decide(AgentRequest(Method.REQUEST_PASSKEY, device_path))
        if decision.verdict is Verdict.ANSWER and decision.passkey is not None:
            return decision.passkey
        if decision.verdict is Verdict.ASK_PASSKEY and self.prompter is not None:
            typed = await self.prompter.passkey()
            if typed is None:
                raise AgentSaidNo(canceled=True)
            return typed
        raise AgentSaidNo()

    async def request_confirmation(self, device_path: str, code: int) -> None:
        self.asked.append((Method.REQUEST_CONFIRMATION.value, device_path))
        shown = f"{code:06d}"
        decision = self.policy.decide(
            AgentRequest(Method.REQUEST_CONFIRMATION, device_path, shown))
        if decision.verdict is Verdict.ANSWER:
            return
        if decision.verdict is Verdict.ASK_CONFIRM and self.prompter is not None:
            said = await self.prompter.confirm(shown)
            if said is None:
                raise AgentSaidNo(canceled=True)
            if said:
                return
        raise AgentSaidNo()


def device_path(address: str, adapter: str = "hci0") -> str:
    """The object path bluetoothd would name the device by in an agent request."""
    return f"/org/bluez/{adapter}/dev_{address.upper().replace(':', '_')}"


async def pair_through_agent(
    device: SimDevice, agent: SimAgent | None, clock: Clock, timeout_s: float = AGENT_TIMEOUT_S
) -> None:
    """``Device1.Pair`` as the fake BlueZ does it, asking ``agent`` (None: no agent, so only
    a just-works device bonds). Raises :class:`PeripheralError` with BlueZ's error."""
    challenge = device.pairing_challenge()
    how = association(challenge.method, agent.capability if agent is not None else None)
    if agent is None or how in (Association.NONE, Association.IMPOSSIBLE):
        # Just Works asks nobody; a device needing more than the agent's IO fails itself
        await device.pair()
        return
    path = device_path(device.address)

    async def ask(asked: SimAgent) -> int | None:
        if how is Association.ENTER_PASSKEY:
            return await asked.request_passkey(path)
        await asked.request_confirmation(path, challenge.code or 0)
        return None

    question = asyncio.ensure_future(ask(agent))
    if challenge.device_cancels:
        # the device gives up while the person is being asked: the question is withdrawn
        await asyncio.sleep(0)
        question.cancel()
        with contextlib.suppress(asyncio.CancelledError, AgentSaidNo):
            await question
        await device.pair()  # ends with AuthenticationCanceled (the device's refusal)
        return
    try:
        answer = await with_timeout(clock, timeout_s, question)
    except TimeoutError:
        raise PeripheralError(SimErrorCode.AUTHENTICATION_TIMEOUT,
                              "Authentication Timeout") from None
    except AgentSaidNo as no:
        if no.canceled:
            raise PeripheralError(SimErrorCode.AUTHENTICATION_CANCELED,
                                  "Authentication Canceled") from None
        raise PeripheralError(SimErrorCode.AUTHENTICATION_FAILED,
                              "Authentication Failed") from None
    if how is Association.ENTER_PASSKEY:
        await device.pair(passkey=answer)
    else:
        await device.pair(confirmed=True)
