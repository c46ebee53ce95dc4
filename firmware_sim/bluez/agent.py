"""Pairing agents, as bluetoothd keeps and calls them (``org.bluez.AgentManager1`` at
``/org/bluez``, ``org.bluez.Agent1`` exported by clients).

An agent belongs to the bus connection that registered it and goes when that connection
leaves. ``Device1.Pair`` uses the caller's own agent, else the default agent. Calls to the
agent carry the device's object path; an agent says no with ``org.bluez.Error.Rejected`` or
``org.bluez.Error.Canceled``. An agent that does not answer within the pairing timeout is sent
``Cancel()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dbus_fast import DBusError, Message, MessageFlag, MessageType

from firmware_sim.bluez.calls import SENDER
from firmware_sim.bluez.errors import bluez_error
from firmware_sim.model.pairing import CAPABILITIES

if TYPE_CHECKING:
    from firmware_sim.bluez.server import FakeBlueZ

log = logging.getLogger(__name__)

AGENT_INTERFACE = "org.bluez.Agent1"
#: the agent errors that mean "the user cancelled" rather than "no"
CANCELED = "org.bluez.Error.Canceled"


@dataclass(frozen=True)
class Agent:
    """A registered agent: the connection that owns it, its object path, its IO capability."""

    owner: str
    path: str
    capability: str


class AgentSaidNo(Exception):
    """The agent answered with an error; ``canceled`` for ``org.bluez.Error.Canceled``."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name
        self.canceled = name == CANCELED


class AgentManager:
    """The registered agents and the default one; calls into them."""

    def __init__(self, server: FakeBlueZ) -> None:
        self.server = server
        self._agents: dict[str, Agent] = {}
        self._default: str | None = None

    # AgentManager1 -------------------------------------------------------------------------

    def register(self, path: str, capability: str) -> None:
        """AgentManager1.RegisterAgent for the calling connection."""
        owner = SENDER.get()
        capability = capability or "KeyboardDisplay"
        if capability not in CAPABILITIES:
            raise bluez_error("InvalidArguments", "Invalid arguments in method call")
        if owner in self._agents:
            raise bluez_error("AlreadyExists", "Already Exists")
        self._agents[owner] = Agent(owner, path, capability)
        log.debug("sim.agent_registered capability=%s", capability)

    def unregister(self, path: str) -> None:
        """AgentManager1.UnregisterAgent."""
        owner = SENDER.get()
        agent = self._agents.get(owner)
        if agent is None or agent.path != path:
            raise bluez_error("DoesNotExist", "Does Not Exist")
        self._forget(owner)

    def request_default(self, path: str) -> None:
        """AgentManager1.RequestDefaultAgent: the caller's registered agent becomes default."""
        owner = SENDER.get()
        agent = self._agents.get(owner)
        if agent is None or agent.path != path:
            raise bluez_error("DoesNotExist", "Does Not Exist")
        self._default = owner

    def client_left(self, name: str) -> None:
        """A connection left the bus: its agent goes with it."""
        if name in self._agents:
            self._forget(name)

    def _forget(self, owner: str) -> None:
        self._agents.pop(owner, None)
        if self._default == owner:
            # bluetoothd falls back to the most recently registered agent, if any
            self._default = next(reversed(self._agents), None)

    # lookups -------------------------------------------------------------------------------

    @property
    def default(self) -> Agent | None:
        """The default agent, if one was requested."""
        return self._agents.get(self._default) if self._default is not None else None

    def for_caller(self, caller: str) -> Agent | None:
        """The agent ``Pair`` from ``caller`` uses: its own, else the default one."""
        return self._agents.get(caller) or self.default

    # calling an agent ----------------------------------------------------------------------

    async def ask(
        self, agent: Agent, member: str, signature: str, body: list[Any], within_s: float
    ) -> Any:
        """Call ``Agent1.<member>`` and return its reply's first value (None if empty).

        Raises :class:`AgentSaidNo` on an error reply, TimeoutError (after sending the agent
        ``Cancel``) when it does not answer within ``within_s`` seconds."""
        msg = Message(
            destination=agent.owner,
            path=agent.path,
            interface=AGENT_INTERFACE,
            member=member,
            signature=signature,
            body=body,
        )
        try:
            reply = await asyncio.wait_for(self.server.bus.call(msg), within_s)
        except TimeoutError:
            self.cancel(agent)
            raise
        except asyncio.CancelledError:
            # CancelPairing, a disconnect, or the device cancelling: the agent's prompt goes
            self.cancel(agent)
            raise
        except DBusError as err:  # pragma: no cover - dbus-fast returns error replies
            raise AgentSaidNo(err.type) from err
        if reply is None or reply.message_type is MessageType.ERROR:
            raise AgentSaidNo((reply.error_name if reply is not None else None) or "")
        return reply.body[0] if reply.body else None

    def prompt_and_withdraw(
        self, agent: Agent, member: str, signature: str, body: list[Any]
    ) -> None:
        """Send ``Agent1.<member>`` and, at once, ``Cancel()``: the device cancelled the
        pairing while the agent was prompting (its late answer is ignored)."""
        if not self.server.running:
            return
        with contextlib.suppress(Exception):
            self.server.bus.send(
                Message(
                    destination=agent.owner,
                    path=agent.path,
                    interface=AGENT_INTERFACE,
                    member=member,
                    signature=signature,
                    body=body,
                )
            )
        self.cancel(agent)

    def cancel(self, agent: Agent) -> None:
        """Send ``Agent1.Cancel()`` (bluetoothd does not wait for its reply)."""
        if not self.server.running:
            return
        with contextlib.suppress(Exception):
            self.server.bus.send(
                Message(
                    destination=agent.owner,
                    path=agent.path,
                    interface=AGENT_INTERFACE,
                    member="Cancel",
                    flags=MessageFlag.NO_REPLY_EXPECTED,
                )
            )

    def release_all(self) -> None:
        """Forget every agent (the fake is stopping)."""
        self._agents.clear()
        self._default = None
