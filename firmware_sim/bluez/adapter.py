"""An adapter, ``/org/bluez/hciN``: power, discovery sessions, per-client filters, the repeated
announcements a real radio's scan produces, and the wedged discovery field reports describe.

A wedged adapter (:meth:`AdapterNode.wedge`) either refuses ``StartDiscovery`` with
``org.bluez.Error.InProgress`` (``in_progress``) or runs a discovery that reports nothing
(``silent``), until it is power-cycled through ``Adapter1.Powered`` false -> true."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dbus_fast import Variant

from firmware_sim.bluez.calls import SENDER
from firmware_sim.bluez.errors import bluez_error
from firmware_sim.bluez.interfaces import AdapterInterface, option
from firmware_sim.bluez.names import norm_uuid
from firmware_sim.model.contract import Advertisement

if TYPE_CHECKING:
    from firmware_sim.bluez.device import DeviceNode
    from firmware_sim.bluez.server import FakeBlueZ

#: the ways discovery wedges
WEDGE_MODES = ("in_progress", "silent")
#: seconds after StartDiscovery when every device is heard a second time
_FIRST_REPEAT = 0.1


@dataclass
class DiscoveryFilter:
    """One client's SetDiscoveryFilter: service UUIDs, an RSSI floor and a name/address prefix."""

    uuids: frozenset[str] = frozenset()
    rssi: int | None = None
    pattern: str = ""

    def matches(self, address: str, adv: Advertisement) -> bool:
        """Whether a device advertising ``adv`` passes this filter."""
        if self.uuids and not self.uuids & {norm_uuid(u) for u in adv.service_uuids}:
            return False
        if self.rssi is not None and adv.rssi < self.rssi:
            return False
        return (
            not self.pattern
            or address.startswith(self.pattern)
            or adv.name.startswith(self.pattern)
        )


class AdapterNode:
    """State and behaviour of ``org.bluez.Adapter1``."""

    def __init__(self, server: FakeBlueZ, name: str, address: str) -> None:
        self.server = server
        self.name = name
        self.path = f"/org/bluez/{name}"
        self.address = address
        self.alias = f"sim-{name}"
        self.iface = AdapterInterface(self)
        self.powered = True
        #: None, or how discovery is wedged: "in_progress" | "silent"
        self.wedged: str | None = None
        self._filters: dict[str, DiscoveryFilter] = {}
        self._sessions: set[str] = set()
        self._ticker: asyncio.Task[None] | None = None

    def export(self) -> None:
        """Put the adapter on the bus (InterfacesAdded), and the devices bonded through it."""
        self.server.export_object(self.path, self.iface)
        for node in self.devices():
            if node.paired:
                node.export()

    def devices(self) -> list[DeviceNode]:
        """This adapter's device nodes."""
        return self.server.registry.nodes_on(self)

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly summary (for the control interface)."""
        return {
            "name": self.name,
            "address": self.address,
            "powered": self.powered,
            "discovering": self.discovering,
            "wedged": self.wedged,
            "connected": [n.address for n in self.devices() if n.connected],
            # the devices this adapter holds a bond with (its side; bonds are per adapter)
            "bonded": [n.address for n in self.devices() if n.paired],
        }

    # power and wedging -----------------------------------------------------------------------

    def wedge(self, mode: str = "in_progress") -> None:
        """Wedge discovery until the adapter is power-cycled (see the module docstring)."""
        if mode not in WEDGE_MODES:
            raise ValueError(f"wedge mode must be one of {', '.join(WEDGE_MODES)}")
        self.wedged = mode

    def set_powered(self, value: bool) -> None:
        """The ``Powered`` setter: off ends discovery and every link; on clears a wedge."""
        if value == self.powered:
            return
        if not value:
            for sender in list(self._sessions):
                self._end_session(sender)
            for node in self.devices():
                node.shutdown()
                node.drop_link(hardware=True)
            self.powered = False
        else:
            self.powered = True
            self.wedged = None
        self.iface.emit_properties_changed(
            {"Powered": self.powered, "PowerState": "on" if self.powered else "off"}
        )

    # discovery ---------------------------------------------------------------------------------

    @property
    def discovering(self) -> bool:
        """Whether any client's discovery session is active."""
        return bool(self._sessions)

    def set_discovery_filter(self, props: dict[str, Variant]) -> None:
        """Adapter1.SetDiscoveryFilter: the calling client's filter (UUIDs, RSSI, Pattern)."""
        sender = SENDER.get()
        uuids = option(props, "UUIDs", [])
        rssi = option(props, "RSSI", None)
        pattern = option(props, "Pattern", "")
        transport = option(props, "Transport", "auto")
        if transport not in ("auto", "le", "bredr"):
            raise bluez_error("InvalidArguments", "Invalid arguments in method call")
        self._filters[sender] = DiscoveryFilter(
            frozenset(norm_uuid(u) for u in uuids), rssi, pattern
        )

    def start_discovery(self) -> None:
        """Adapter1.StartDiscovery: a session for the caller; visible, wanted devices appear."""
        sender = SENDER.get()
        if not self.powered:
            raise bluez_error("NotReady", "Resource Not Ready")
        if sender in self._sessions or self.wedged == "in_progress":
            raise bluez_error("InProgress", "Operation already in progress")
        was = self.discovering
        self._sessions.add(sender)
        if not was:
            self.iface.emit_properties_changed({"Discovering": True})
            if self.server.options.advertising_interval is not None:
                self._ticker = self.server.spawn(
                    self._advertise(self.server.options.advertising_interval)
                )
        for node in self.devices():
            node.cancel_removal()
            self.announce(node)

    def stop_discovery(self) -> None:
        """Adapter1.StopDiscovery: end the caller's session."""
        sender = SENDER.get()
        if sender not in self._sessions:
            raise bluez_error("Failed", "No discovery started")
        self._end_session(sender)

    def _end_session(self, sender: str) -> None:
        self._sessions.discard(sender)
        self._filters.pop(sender, None)
        if self._sessions:
            return
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        self.iface.emit_properties_changed({"Discovering": False})
        timeout = self.server.options.temporary_device_timeout
        for node in self.devices():
            if node.exported:
                node.iface.emit_properties_changed({}, ["RSSI"])
                if timeout is not None:
                    node.schedule_removal(timeout)

    def client_left(self, name: str) -> None:
        """A client left the bus: its filter and session go."""
        self._filters.pop(name, None)
        if name in self._sessions:
            self._end_session(name)

    def shutdown(self) -> None:
        """Stop advertising repeats and forget every session."""
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        self._sessions.clear()

    def wanted(self, node: DeviceNode) -> bool:
        """Whether a current discovery session would report ``node``."""
        if not self._sessions:
            return False
        filters = [self._filters.get(s, DiscoveryFilter()) for s in self._sessions]
        return any(f.matches(node.address, node.adv) for f in filters)

    def announce(self, node: DeviceNode) -> None:
        """Report ``node`` as advertising if it is visible and wanted: InterfacesAdded the
        first time, a PropertiesChanged (RSSI and friends) afterwards."""
        if node.connected or not node.peripheral.visible or self.wedged == "silent":
            return
        fresh = node.peripheral.advertisement()
        previous = node.adv
        node.adv = fresh
        if not self.wanted(node):
            return
        node.announced_at = asyncio.get_running_loop().time()
        if not node.exported:
            node.export()
            return
        changed: dict[str, Any] = {"RSSI": fresh.rssi}
        if fresh.name != previous.name:
            changed["Name"] = fresh.name
            changed["Alias"] = fresh.name
        if fresh.service_uuids != previous.service_uuids:
            changed["UUIDs"] = node.uuids()
        if fresh.manufacturer_data != previous.manufacturer_data:
            changed["ManufacturerData"] = {
                k: Variant("ay", bytes(v)) for k, v in fresh.manufacturer_data.items()
            }
        if fresh.service_data != previous.service_data:
            changed["ServiceData"] = {
                k: Variant("ay", bytes(v)) for k, v in fresh.service_data.items()
            }
        node.iface.emit_properties_changed(changed)

    async def _advertise(self, interval: float) -> None:
        loop = asyncio.get_running_loop()
        wait = min(_FIRST_REPEAT, interval)
        while True:
            await asyncio.sleep(wait)
            stale_before = loop.time() - wait
            for node in self.devices():
                if node.announced_at <= stale_before:
                    self.announce(node)
            wait = interval

    async def remove_device(self, path: str) -> None:
        """Adapter1.RemoveDevice."""
        node = next((n for n in self.devices() if n.path == path and n.exported), None)
        if node is None:
            raise bluez_error("DoesNotExist", "Does Not Exist")
        await node.remove()
