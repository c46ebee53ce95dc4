"""Which adapters exist and which peripherals each one can see.

Every adapter has its own ``Device1`` object for each peripheral (``/org/bluez/hciN/dev_…``),
as bluetoothd does: discovery, connections and bonds are per adapter. A peripheral has one
event sink, a :class:`Fanout` that passes its events on to its nodes on every adapter.
Adapters come and go at run time like USB dongles: ``InterfacesAdded`` / ``InterfacesRemoved``
of ``org.bluez.Adapter1`` under ``/org/bluez/hciN``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from firmware_sim.bluez.adapter import AdapterNode
from firmware_sim.bluez.bonds import DeviceBonds
from firmware_sim.bluez.device import DeviceNode
from firmware_sim.bluez.names import DEFAULT_ADAPTER_ADDRESS
from firmware_sim.model.contract import Peripheral

if TYPE_CHECKING:
    from firmware_sim.bluez.server import FakeBlueZ

ADAPTER_NAME = re.compile(r"hci\d{1,3}")


def default_address(name: str) -> str:
    """A stable public-looking address for adapter ``name`` (hciN)."""
    n = int("".join(c for c in name if c.isdigit()) or "0")
    return DEFAULT_ADAPTER_ADDRESS if n == 0 else f"00:1A:7D:DB:{n // 256:02X}:{n % 256:02X}"


class Fanout:
    """The peripheral's event sink: its device nodes on every adapter, and the device's side
    of its bonds (one per adapter)."""

    def __init__(self, bonds: DeviceBonds) -> None:
        self.nodes: dict[str, DeviceNode] = {}
        self.bonds = bonds

    def notify(self, handle: int, value: bytes) -> None:
        for node in list(self.nodes.values()):
            node.notify(handle, value)

    def disconnected(self, reason: str) -> None:
        for node in list(self.nodes.values()):
            node.disconnected(reason)

    def advertisement_changed(self) -> None:
        for node in list(self.nodes.values()):
            node.advertisement_changed()


class Registry:
    """Adapters (in the order they were added) and the peripherals they serve."""

    def __init__(self, server: FakeBlueZ) -> None:
        self.server = server
        self.adapters: dict[str, AdapterNode] = {}
        self._fanouts: dict[str, tuple[Peripheral, Fanout]] = {}
        #: the hub's side of the bonds of unplugged adapters, by adapter address: BlueZ keeps
        #: them on disk (/var/lib/bluetooth/<adapter>/), so the same dongle brings them back
        self._kept: dict[str, set[str]] = {}

    # adapters ------------------------------------------------------------------------------

    def add_adapter(self, name: str, address: str) -> AdapterNode:
        """A new adapter (a dongle plugged in); on the bus at once if the fake runs."""
        if not ADAPTER_NAME.fullmatch(name):
            raise ValueError(f"adapter name must look like hci0, got {name!r}")
        if name in self.adapters:
            raise ValueError(f"adapter {name} already exists")
        address = address.upper()
        if any(a.address == address for a in self.adapters.values()):
            raise ValueError(f"adapter address {address} already in use")
        adapter = AdapterNode(self.server, name, address)
        self.adapters[name] = adapter
        kept = self._kept.pop(address, set())
        for key, (peripheral, fanout) in self._fanouts.items():
            # a new adapter holds no bonds: bonded devices must pair again through it
            fanout.nodes[name] = DeviceNode(self.server, adapter, peripheral, fanout.bonds,
                                            paired=key in kept)
        if self.server.running:
            adapter.export()
        return adapter

    def configure_adapter(self, spec: dict[str, Any]) -> AdapterNode:
        """Apply a scenario's ``[[adapters]]`` entry: add the adapter if it is new, set its
        address (before start), wedge it."""
        name = str(spec["name"])
        adapter = self.adapters.get(name)
        if adapter is None:
            adapter = self.add_adapter(name, spec.get("address") or default_address(name))
        elif spec.get("address") and not self.server.running:
            adapter.address = str(spec["address"]).upper()
        if spec.get("wedged"):
            adapter.wedge(str(spec["wedged"]))
        return adapter

    def remove_adapter(self, name: str) -> None:
        """Take an adapter away (a dongle unplugged): its links drop, its objects go."""
        adapter = self.adapters.pop(name, None)
        if adapter is None:
            raise KeyError(f"no adapter {name}")
        self._kept[adapter.address] = {
            key for key, (_p, fanout) in self._fanouts.items()
            if (node := fanout.nodes.get(name)) is not None and node.paired
        }
        for _peripheral, fanout in self._fanouts.values():
            node = fanout.nodes.pop(name, None)
            if node is not None:
                node.shutdown()
                node.drop_link(hardware=True)
                node.unexport()
        adapter.shutdown()
        self.server.unexport_object(adapter.path)

    def adapter(self, name: str) -> AdapterNode:
        """The adapter called ``name``; KeyError if there is none."""
        try:
            return self.adapters[name]
        except KeyError:
            raise KeyError(f"no adapter {name}") from None

    @property
    def primary(self) -> AdapterNode:
        """The first adapter still present."""
        for adapter in self.adapters.values():
            return adapter
        raise LookupError("no adapter")

    # peripherals ---------------------------------------------------------------------------

    def add_peripheral(self, peripheral: Peripheral) -> None:
        """Serve ``peripheral`` on every adapter."""
        key = peripheral.address.upper()
        if key in self._fanouts:
            raise ValueError("a device with this address is already served")
        bonds = DeviceBonds(peripheral, [a.address for a in self.adapters.values()])
        fanout = Fanout(bonds)
        for name, adapter in self.adapters.items():
            fanout.nodes[name] = DeviceNode(self.server, adapter, peripheral, bonds,
                                            paired=peripheral.paired)
        self._fanouts[key] = (peripheral, fanout)
        peripheral.set_events(fanout)
        if self.server.running:
            for node in fanout.nodes.values():
                if node.adapter.discovering:
                    node.adapter.announce(node)

    def remove_peripheral(self, address: str) -> None:
        """Stop serving a peripheral: its links drop and its objects disappear."""
        entry = self._fanouts.pop(address.upper(), None)
        if entry is None:
            return
        peripheral, fanout = entry
        peripheral.set_events(None)
        for node in fanout.nodes.values():
            node.shutdown()
            node.drop_link()  # as bluetoothd: the link goes before the object
            node.unexport()

    def has_peripheral(self, address: str) -> bool:
        """Whether a peripheral with ``address`` is served."""
        return address.upper() in self._fanouts

    def nodes_on(self, adapter: AdapterNode) -> list[DeviceNode]:
        """The device nodes of ``adapter``, in the order the peripherals were added."""
        out = []
        for _peripheral, fanout in self._fanouts.values():
            node = fanout.nodes.get(adapter.name)
            if node is not None:
                out.append(node)
        return out

    def nodes_of(self, address: str) -> list[DeviceNode]:
        """The device nodes of the peripheral with ``address``, one per adapter."""
        entry = self._fanouts.get(address.upper())
        return list(entry[1].nodes.values()) if entry is not None else []

    def all_nodes(self) -> list[DeviceNode]:
        """Every device node on every adapter."""
        return [n for _p, f in self._fanouts.values() for n in f.nodes.values()]

    def detach(self) -> None:
        """The fake stops: peripherals lose their sink."""
        for peripheral, _fanout in self._fanouts.values():
            peripheral.set_events(None)
