"""The gateway's pairing agent: an ``org.bluez.Agent1`` on the system bus, with dbus-fast.

bleak registers no agent, and a meter that bonds only with a passkey needs one. The decisions
are pure (:mod:`edge.ble.agent_policy`); this is the shell that applies them.
:class:`AgentShell` answers BlueZ's calls on its own bus connection — only calls from the owner
of ``org.bluez``; anyone else is rejected, so no other local client learns a passkey from it —
asking the person through an injected :class:`Prompter` when the policy says so;
:func:`registered_agent` makes it the default agent for a block and always unregisters it;
:class:`HubAgent` is ``edge run``'s standing agent that rejects every request.

The capability is ``KeyboardDisplay`` in both roles: BlueZ then asks the agent about every
pairing except a Just Works one the hub starts itself, instead of deciding on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from dbus_fast import BusType, Message, MessageFlag, MessageType
from dbus_fast.aio import MessageBus

from edge.ble.agent_policy import (
    PASSKEY_MAX,
    REJECT_ALL,
    AgentLog,
    AgentRequest,
    AuditThrottle,
    Handled,
    Method,
    Outcome,
    PairingPolicy,
    Policy,
    Verdict,
    Why,
)
from edge.clock import Clock, SystemClock, with_timeout
from edge.errors import BleError, EdgeError
from edge.log import REDACTOR, get_logger

log = get_logger("edge.ble.agent")

AGENT_INTERFACE = "org.bluez.Agent1"
AGENT_PATH = "/com/edge/agent"
CAPABILITY = "KeyboardDisplay"
BLUEZ = "org.bluez"
REJECTED = "org.bluez.Error.Rejected"
CANCELED = "org.bluez.Error.Canceled"
#: how long a call to BlueZ's AgentManager1 may take
MANAGER_CALL_TIMEOUT_S = 10.0
#: each request's argument and reply signatures
SIGNATURES: dict[Method, tuple[str, str]] = {
    Method.REQUEST_PASSKEY: ("o", "u"),
    Method.REQUEST_CONFIRMATION: ("ou", ""),
    Method.REQUEST_AUTHORIZATION: ("o", ""),
    Method.AUTHORIZE_SERVICE: ("os", ""),
    Method.REQUEST_PIN_CODE: ("o", "s"),
    Method.DISPLAY_PASSKEY: ("ouq", ""),
    Method.DISPLAY_PIN_CODE: ("os", ""),
}


class Prompter(Protocol):
    """The person at the terminal (``edge pair``); tests inject their own."""

    async def passkey(self) -> int | None:
        """The passkey typed, or None when no usable answer came."""

    async def confirm(self, code: str) -> bool | None:
        """Whether the device shows ``code``; None when no answer came."""

    def show(self, code: str) -> None:
        """Show a code the person types on the device."""


def _parse(msg: Message) -> AgentRequest | None:
    try:
        method = Method(msg.member or "")
    except ValueError:
        return None
    if msg.signature != SIGNATURES[method][0]:
        return None
    body = list(msg.body)
    code: str | None = None
    if method in (Method.REQUEST_CONFIRMATION, Method.DISPLAY_PASSKEY):
        code = f"{int(body[1]):06d}"
    elif method is Method.DISPLAY_PIN_CODE:
        code = str(body[1])
    return AgentRequest(method, str(body[0]), code)


class AgentShell:
    """One ``Agent1`` object on ``bus`` at ``path``: BlueZ's calls are answered by ``policy``,
    with ``prompter`` for the person's answers; each handled request is recorded in ``log``
    and passed to ``on_handled``."""

    def __init__(
        self,
        bus: MessageBus,
        policy: Policy,
        *,
        prompter: Prompter | None = None,
        on_handled: Callable[[Handled], None] | None = None,
        path: str = AGENT_PATH,
    ) -> None:
        self.bus = bus
        self.policy = policy
        self.prompter = prompter
        self.on_handled = on_handled
        self.path = path
        self.log = AgentLog()
        self.bluez_owner: str | None = None
        self.bluez_changed = asyncio.Event()
        self._asking: set[asyncio.Task[None]] = set()
        self._withdrawn: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        """Learn who owns ``org.bluez`` (and follow it), then take calls."""
        match = ("type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
                 "member='NameOwnerChanged',arg0='org.bluez'")
        await _bus_call(self.bus, "AddMatch", "s", [match])
        reply = await _bus_call(self.bus, "GetNameOwner", "s", [BLUEZ])
        if reply.message_type is MessageType.ERROR:
            raise BleError("BlueZ is not running on the system bus (is bluetoothd running?)")
        self.bluez_owner = str(reply.body[0])
        self.bus.add_message_handler(self._on_message)

    def stop(self) -> None:
        """Take no more calls; withdraw any question being asked."""
        self.bus.remove_message_handler(self._on_message)
        self.withdraw()

    def withdraw(self) -> None:
        """BlueZ's ``Cancel``: the questions being asked are withdrawn."""
        for task in list(self._asking):
            if not task.done():
                self._withdrawn.add(task)
                task.cancel()

    def _on_message(self, msg: Message) -> Message | bool | None:
        if msg.message_type is MessageType.SIGNAL and msg.member == "NameOwnerChanged":
            if msg.sender == "org.freedesktop.DBus" and msg.body and msg.body[0] == BLUEZ:
                self.bluez_owner = str(msg.body[2]) or None
                self.bluez_changed.set()
            return None
        if msg.message_type is not MessageType.METHOD_CALL or msg.path != self.path:
            return None
        if msg.interface not in (None, AGENT_INTERFACE):
            return None
        if msg.sender != self.bluez_owner:
            # Only bluetoothd asks an agent anything: nobody else learns a passkey from it.
            log.warning("ble.agent_call_refused", reason="not_bluez")
            return Message.new_error(msg, REJECTED, "Rejected")
        if msg.member == "Cancel":
            self.log.cancels += 1
            self.withdraw()
            return self._reply(msg, Message.new_method_return(msg))
        if msg.member == "Release":
            return self._reply(msg, Message.new_method_return(msg))
        request = _parse(msg)
        if request is None:
            return Message.new_error(msg, "org.freedesktop.DBus.Error.UnknownMethod", "Unknown")
        task = asyncio.get_running_loop().create_task(self._answer(msg, request))
        self._asking.add(task)
        task.add_done_callback(self._asking.discard)
        return True

    @staticmethod
    def _reply(msg: Message, reply: Message) -> Message | bool:
        return True if msg.flags & MessageFlag.NO_REPLY_EXPECTED else reply

    async def _answer(self, msg: Message, request: AgentRequest) -> None:
        me = asyncio.current_task()
        try:
            outcome, why, value = await self._decide(request)
        except asyncio.CancelledError:
            if me is None or me not in self._withdrawn:
                raise  # not BlueZ's Cancel: this process is stopping
            self._withdrawn.discard(me)
            outcome, why, value = Outcome.WITHDRAWN, None, None
        except (OSError, ValueError) as exc:  # the terminal went away: no answer
            log.warning("ble.agent_prompt_failed", error=type(exc).__name__)
            outcome, why, value = Outcome.ABORTED, None, None
        if outcome is Outcome.ANSWERED and SIGNATURES[request.method][1] and value is None:
            outcome, why = Outcome.REJECTED, Why.UNSUPPORTED  # nothing to answer it with
        self._record(Handled(request, outcome, why))
        if msg.flags & MessageFlag.NO_REPLY_EXPECTED:
            return
        if outcome is Outcome.ANSWERED:
            sig = SIGNATURES[request.method][1]
            body = [] if not sig else [value]
            self._send(Message.new_method_return(msg, sig, body))
        elif outcome in (Outcome.ABORTED, Outcome.WITHDRAWN):
            self._send(Message.new_error(msg, CANCELED, "Canceled"))
        else:
            self._send(Message.new_error(msg, REJECTED, "Rejected"))

    async def _decide(self, request: AgentRequest) -> tuple[Outcome, Why | None, Any]:
        decision = self.policy.decide(request)
        verdict, prompter = decision.verdict, self.prompter
        if verdict is Verdict.REJECT:
            return Outcome.REJECTED, decision.why, None
        if verdict is Verdict.ANSWER:
            return Outcome.ANSWERED, None, decision.passkey
        if prompter is None:
            if verdict is Verdict.SHOW:
                return Outcome.ANSWERED, None, None
            return Outcome.REJECTED, Why.NO_PASSKEY if verdict is Verdict.ASK_PASSKEY else (
                Why.NO_CONFIRM), None
        if verdict is Verdict.SHOW:
            prompter.show(request.code or "")
            return Outcome.ANSWERED, None, None
        if verdict is Verdict.ASK_PASSKEY:
            passkey = await prompter.passkey()
            if passkey is None or not 0 <= passkey <= PASSKEY_MAX:
                return Outcome.ABORTED, None, None
            return Outcome.ANSWERED, None, passkey
        yes = await prompter.confirm(request.code or "")
        if yes is None:
            return Outcome.ABORTED, None, None
        return (Outcome.ANSWERED, None, None) if yes else (Outcome.DECLINED, None, None)

    def _record(self, handled: Handled) -> None:
        self.log.handled.append(handled)
        log.debug("ble.agent_request", method=handled.request.method.value,
                  outcome=handled.outcome.value, why=handled.why)
        if self.on_handled is not None:
            self.on_handled(handled)

    def _send(self, reply: Message) -> None:
        with contextlib.suppress(Exception):  # the bus went: BlueZ is not waiting any more
            self.bus.send(reply)


async def _bus_call(bus: MessageBus, member: str, signature: str, body: list[Any]) -> Message:
    reply = await bus.call(Message(destination="org.freedesktop.DBus",
                                   path="/org/freedesktop/DBus", interface="org.freedesktop.DBus",
                                   member=member, signature=signature, body=body))
    assert reply is not None
    return reply


async def _manager_call(bus: MessageBus, clock: Clock, member: str, signature: str,
                        body: list[Any]) -> None:
    """``AgentManager1.<member>``; raises :class:`BleError` naming the D-Bus error."""
    msg = Message(destination=BLUEZ, path="/org/bluez", interface="org.bluez.AgentManager1",
                  member=member, signature=signature, body=body)
    try:
        reply = await with_timeout(clock, MANAGER_CALL_TIMEOUT_S, bus.call(msg))
    except TimeoutError as exc:
        raise BleError(f"BlueZ did not answer {member}") from exc
    if reply is None or reply.message_type is MessageType.ERROR:
        name = (reply.error_name if reply is not None else None) or "no reply"
        raise BleError(f"BlueZ refused {member} ({name.rsplit('.', 1)[-1]})")


async def _connect(bus_address: str | None) -> MessageBus:
    try:
        return await MessageBus(bus_address=bus_address, bus_type=BusType.SYSTEM).connect()
    except (OSError, EOFError, ValueError) as exc:
        raise BleError("cannot reach BlueZ on the system D-Bus to register a pairing agent — "
                       "is bluetoothd running, and is this user allowed to use it?") from exc
    except Exception as exc:  # dbus-fast's auth and bus errors: translated, text not passed on
        raise BleError(f"cannot connect to the system D-Bus ({type(exc).__name__})") from exc


@contextlib.asynccontextmanager
async def registered_agent(
    policy: Policy,
    *,
    prompter: Prompter | None = None,
    on_handled: Callable[[Handled], None] | None = None,
    bus_address: str | None = None,
    clock: Clock | None = None,
) -> AsyncIterator[AgentShell]:
    """An agent answering by ``policy``, registered (``KeyboardDisplay``) and made the default
    agent for the block, on its own system-bus connection; unregistered afterwards, always
    (and gone with the connection even if this process is killed)."""
    clock = clock or SystemClock()
    bus = await _connect(bus_address)
    try:
        shell = AgentShell(bus, policy, prompter=prompter, on_handled=on_handled)
        await shell.start()
        await _manager_call(bus, clock, "RegisterAgent", "os", [shell.path, CAPABILITY])
        try:
            await _manager_call(bus, clock, "RequestDefaultAgent", "o", [shell.path])
            yield shell
        finally:
            shell.stop()
            with contextlib.suppress(EdgeError, OSError, EOFError):
                await _manager_call(bus, clock, "UnregisterAgent", "o", [shell.path])
    finally:
        bus.disconnect()


@contextlib.asynccontextmanager
async def pairing_agent(
    policy: PairingPolicy, *, prompter: Prompter | None = None, bus_address: str | None = None
) -> AsyncIterator[AgentLog]:
    """``edge pair``'s agent for one device, for the block; yields what it was asked."""
    async with registered_agent(policy, prompter=prompter, bus_address=bus_address) as shell:
        yield shell.log


# --- the daemon's standing agent -------------------------------------------------------------

#: ``audit(action, subject)`` into the vault's audit chain
AuditFn = Callable[[str, str], Awaitable[None]]
AUDIT_ACTION = "device.unsolicited_pairing_rejected"


class StandingAgent(Protocol):
    """What the daemon needs from its agent (:class:`HubAgent`, or a test's)."""

    async def run(self) -> None: ...

    def stats(self) -> dict[str, object]: ...


#: makes the daemon's agent from its audit function and clock
StandingAgentFactory = Callable[[AuditFn, Clock], StandingAgent]


class HubAgent:
    """``edge run``'s default agent: rejects every pairing request (no device bonds with the
    hub except through ``edge pair``), counts them, audits them (throttled; the device by its
    keyed hash, never its address). ``run`` holds it until cancelled, and fails (for the
    supervisor to register it again) when the bus or BlueZ goes away."""

    def __init__(self, audit: AuditFn | None = None, clock: Clock | None = None, *,
                 bus_address: str | None = None, throttle: AuditThrottle | None = None) -> None:
        self._audit = audit
        self._clock = clock or SystemClock()
        self._bus_address = bus_address
        self._throttle = throttle or AuditThrottle()
        self._audits: set[asyncio.Task[None]] = set()
        self.state = "starting"
        self.rejected = 0
        self.audited = 0

    async def run(self) -> None:
        try:
            async with registered_agent(REJECT_ALL, on_handled=self._handled,
                                        bus_address=self._bus_address,
                                        clock=self._clock) as shell:
                self.state = "holding"
                log.info("ble.agent_holding")
                lost = asyncio.ensure_future(shell.bluez_changed.wait())
                # shielded: cancelling our wait must not cancel the bus's own disconnect future
                gone = asyncio.ensure_future(asyncio.shield(
                    shell.bus.wait_for_disconnect()))  # type: ignore[no-untyped-call]
                try:
                    await asyncio.wait({lost, gone}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    lost.cancel()
                    gone.cancel()
            raise BleError("the pairing agent lost BlueZ; registering it again")
        finally:
            self.state = "stopped"

    def _handled(self, handled: Handled) -> None:
        self.rejected += 1
        address = handled.request.address
        device = REDACTOR.device_hash(address) if address else "device unknown"
        log.info("ble.unsolicited_pairing_rejected", device=device,
                 method=handled.request.method.value)
        if self._audit is None or not self._throttle.allow(device, self._clock.monotonic()):
            return
        task = asyncio.get_running_loop().create_task(
            self._write(f"{device} {handled.request.method.value}"))
        self._audits.add(task)
        task.add_done_callback(self._audits.discard)

    async def _write(self, subject: str) -> None:
        assert self._audit is not None
        try:
            await self._audit(AUDIT_ACTION, subject)
            self.audited += 1
        except EdgeError as exc:  # counted already; a failing audit must not stop the agent
            log.warning("ble.agent_audit_failed", error=type(exc).__name__)

    def stats(self) -> dict[str, object]:
        return {"agent": self.state, "unsolicited_pairing_rejected": self.rejected}
