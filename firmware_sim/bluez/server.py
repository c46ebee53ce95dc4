"""A fake ``bluetoothd``: serves simulated peripherals as ``org.bluez`` on a D-Bus.

The object tree is BlueZ's: ``/org/bluez/hci0`` (Adapter1, :mod:`.adapter`),
``…/dev_AA_BB_CC_DD_EE_FF`` (Device1, :mod:`.device`) and, while connected, ``…/serviceXXXX``,
``…/charXXXX``, ``…/descXXXX`` (:mod:`.gatt`) named after the attribute handles (bleak parses
them back out of the paths). The D-Bus surface of each is declared in :mod:`.interfaces`.
ObjectManager and Properties are dbus-fast's; InterfacesAdded/Removed come from exporting and
unexporting. This module holds the service itself: the bus connection, the object registry and
the message filter.

Behaviour that real BlueZ shows but tests often do not want is behind :class:`BlueZOptions`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dbus_fast import BusType, DBusError, Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_fast.constants import NameFlag, RequestNameReply
from dbus_fast.service import ServiceInterface

from firmware_sim.bluez.adapter import AdapterNode
from firmware_sim.bluez.agent import AgentManager
from firmware_sim.bluez.calls import SENDER, RecordedCall, summarise_options
from firmware_sim.bluez.device import DeviceNode
from firmware_sim.bluez.errors import UNKNOWN_OBJECT
from firmware_sim.bluez.gatt import CharacteristicNode
from firmware_sim.bluez.interfaces import (
    CHARACTERISTIC_INTERFACE,
    AgentManagerInterface,
    GattCharacteristicInterface,
)
from firmware_sim.bluez.names import (
    BLUEZ_SERVICE,
    DEFAULT_ADAPTER_ADDRESS,
    OBJECT_MANAGER,
    device_path,
)
from firmware_sim.bluez.registry import Registry
from firmware_sim.errors import BusNameTakenError
from firmware_sim.model.contract import Peripheral

if TYPE_CHECKING:
    from firmware_sim.fleet import Fleet, SimDevice

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BlueZOptions:
    """Switches for real-BlueZ behaviours and timing."""

    adapter: str = "hci0"
    adapter_address: str = DEFAULT_ADAPTER_ADDRESS
    #: keep GATT objects after a disconnect (BlueZ's GATT cache for bonded devices)
    keep_gatt_after_disconnect: bool = False
    #: remove unpaired, unconnected devices this many seconds after discovery stops
    #: (BlueZ's TemporaryTimeout, 30 s); None keeps them
    temporary_device_timeout: float | None = None
    #: a ReadValue result is also emitted as a ``Value`` change (duplicate notifications)
    read_emits_value: bool = False
    #: while discovering, a device not heard from for this long (seconds) is announced again,
    #: as a real device keeps advertising; the first repeat comes shortly after discovery
    #: starts, so a scanner that subscribes after StartDiscovery returns still hears it
    #: (bleak's find_device_by_*). None: only announce on start and on peripheral changes
    advertising_interval: float | None = 1.0
    #: seconds an agent has to answer a pairing request before bluetoothd gives up with
    #: AuthenticationTimeout and sends it ``Cancel`` (the kernel's SMP timeout is 30 s)
    agent_timeout: float = 30.0
    #: record every method call received (for the bleak canary test)
    record_calls: bool = False


class _RootObjectManagerBus(MessageBus):
    """dbus-fast sends InterfacesAdded/Removed from the object's own path; bluetoothd's
    ObjectManager is ``/`` and clients matching on ``path='/'`` expect them from there."""

    def _emit_interface_added(self, path: str, interface: ServiceInterface) -> None:
        if not self.connected:
            return

        def send(_iface: ServiceInterface, props: Any, _data: Any, err: Exception | None) -> None:
            if err is not None:
                log.warning("sim.bluez_properties_failed", exc_info=err)
            self.send(
                Message.new_signal(
                    "/",
                    OBJECT_MANAGER,
                    "InterfacesAdded",
                    "oa{sa{sv}}",
                    [path, {interface.name: props}],
                )
            )

        ServiceInterface._get_all_property_values(interface, send)

    def _emit_interface_removed(self, path: str, removed_interfaces: list[str]) -> None:
        if not self.connected:
            return
        self.send(
            Message.new_signal(
                "/", OBJECT_MANAGER, "InterfacesRemoved", "oas", [path, removed_interfaces]
            )
        )


class FakeBlueZ:
    """``org.bluez`` on the bus at ``bus_address``, serving ``peripherals``.

    ``start()`` connects, claims the name and exports the adapter; devices become visible to
    clients when a client starts discovery (or at once when already paired).
    """

    def __init__(
        self,
        bus_address: str,
        peripherals: Iterable[Peripheral] = (),
        options: BlueZOptions | None = None,
    ) -> None:
        self.options = options or BlueZOptions()
        self._address = bus_address
        self._bus: MessageBus | None = None
        self.agents = AgentManager(self)
        self.registry = Registry(self)
        self.registry.add_adapter(self.options.adapter, self.options.adapter_address)
        self._exported: set[str] = set()
        self._chars_by_path: dict[str, CharacteristicNode] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.calls: list[RecordedCall] = []
        for peripheral in peripherals:
            self.add_peripheral(peripheral)

    # lifecycle -----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the fake is connected to its bus (started, not stopped)."""
        return self._bus is not None

    @property
    def bus(self) -> MessageBus:
        """The fake's own bus connection (started)."""
        if self._bus is None:
            raise RuntimeError("FakeBlueZ not started")
        return self._bus

    async def start(self) -> None:
        """Connect, claim ``org.bluez`` and export the adapter and already-known devices."""
        bus = _RootObjectManagerBus(
            bus_address=self._address, bus_type=BusType.SYSTEM, negotiate_unix_fd=True
        )
        await bus.connect()
        self._bus = bus
        bus.add_message_handler(self._filter)
        # Learn about clients leaving so their discovery/notify sessions end, as in bluetoothd.
        await bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="AddMatch",
                signature="s",
                body=["type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged'"],
            )
        )
        self.export_object("/org/bluez", AgentManagerInterface(self.agents))
        for adapter in self.registry.adapters.values():
            adapter.export()
        reply = await bus.request_name(BLUEZ_SERVICE, NameFlag.DO_NOT_QUEUE)
        if reply is not RequestNameReply.PRIMARY_OWNER:
            bus.disconnect()
            self._bus = None
            raise BusNameTakenError("org.bluez is already owned on this bus")
        log.info("sim.bluez_started")

    async def stop(self) -> None:
        """End notify sessions, stop timers, detach from the peripherals and leave the bus.
        (Links the peripherals hold stay theirs to drop: ``Fleet.stop`` does.)"""
        for adapter in self.registry.adapters.values():
            adapter.shutdown()
        for node in self.registry.all_nodes():
            node.shutdown()
        self.registry.detach()
        self.agents.release_all()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.disconnect()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(bus.wait_for_disconnect(), 5)  # type: ignore[no-untyped-call]
        log.info("sim.bluez_stopped")

    async def wait_closed(self) -> None:
        """Return when the fake's bus connection is gone (stopped, or the daemon died)."""
        if self._bus is None:
            return
        with contextlib.suppress(Exception):
            # shielded: cancelling a waiter must not cancel the bus's own disconnect future
            await asyncio.shield(self._bus.wait_for_disconnect())  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> FakeBlueZ:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # devices -------------------------------------------------------------------------------

    @property
    def adapter(self) -> AdapterNode:
        """The primary adapter (the first one still present; ``hci0`` unless removed)."""
        return self.registry.primary

    @property
    def adapters(self) -> list[AdapterNode]:
        """Every adapter present, in the order they were added."""
        return list(self.registry.adapters.values())

    def add_adapter(self, name: str, address: str) -> AdapterNode:
        """Plug in an adapter (InterfacesAdded); it sees every served device."""
        return self.registry.add_adapter(name, address)

    def remove_adapter(self, name: str) -> None:
        """Unplug an adapter: its links drop and its objects go (InterfacesRemoved)."""
        self.registry.remove_adapter(name)

    @property
    def devices(self) -> list[DeviceNode]:
        """The device nodes of the primary adapter, in insertion order."""
        return self.registry.nodes_on(self.adapter)

    def device(self, address: str, adapter: str | None = None) -> DeviceNode:
        """The node of the device with ``address`` on ``adapter`` (default: the primary)."""
        target = self.registry.adapter(adapter) if adapter else self.adapter
        for node in self.registry.nodes_of(address):
            if node.adapter is target:
                return node
        raise KeyError(address)

    def device_path(self, address: str, adapter: str | None = None) -> str:
        """The D-Bus object path BlueZ would give the device with ``address``."""
        target = self.registry.adapter(adapter) if adapter else self.adapter
        return device_path(target.path, address)

    def add_peripheral(self, peripheral: Peripheral) -> DeviceNode | None:
        """Serve ``peripheral`` on every adapter; it shows up at the next discovery (or now,
        if discovering). Returns its node on the primary adapter (None without adapters)."""
        self.registry.add_peripheral(peripheral)
        nodes = self.registry.nodes_of(peripheral.address)
        return nodes[0] if nodes else None

    def follow(self, fleet: Fleet) -> Callable[[], None]:
        """Serve every device of ``fleet`` and follow its additions and removals. Returns a
        function that stops following (the devices stay served)."""
        for spec in fleet.adapters:
            self.registry.configure_adapter(spec)
        for device in fleet.devices:
            if not self.registry.has_peripheral(device.address):
                self.add_peripheral(device)

        def added(device: SimDevice) -> None:
            self.add_peripheral(device)

        def removed(device: SimDevice) -> None:
            self.remove_peripheral(device.address)

        fleet.on_added.append(added)
        fleet.on_removed.append(removed)

        def unfollow() -> None:
            with contextlib.suppress(ValueError):
                fleet.on_added.remove(added)
            with contextlib.suppress(ValueError):
                fleet.on_removed.remove(removed)

        return unfollow

    def remove_peripheral(self, address: str) -> None:
        """Stop serving a device: its link drops and its objects disappear."""
        self.registry.remove_peripheral(address)

    # plumbing used by the nodes --------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` in the background, keeping a reference and logging failures."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("sim.bluez_task_failed", exc_info=task.exception())

    def export_object(self, path: str, iface: Any) -> None:
        """Put ``iface`` on the bus at ``path`` (InterfacesAdded); nothing before start()."""
        if self._bus is None:
            return
        self._bus.export(path, iface)
        self._exported.add(path)
        if isinstance(iface, GattCharacteristicInterface):
            self._chars_by_path[path] = iface._node

    def unexport_object(self, path: str) -> None:
        """Remove the object at ``path`` from the bus (InterfacesRemoved)."""
        self._chars_by_path.pop(path, None)
        if self._bus is None or path not in self._exported:
            return
        self._exported.discard(path)
        self._bus.unexport(path)

    def is_exported(self, path: str) -> bool:
        """Whether an object is currently on the bus at ``path``."""
        return path in self._exported

    # message filter ----------------------------------------------------------------------------

    def _filter(self, msg: Message) -> bool:
        """Runs before dbus-fast dispatches: notes the sender, records the call, answers
        calls to vanished objects and AcquireNotify; returns True when it replied."""
        if msg.message_type is MessageType.SIGNAL:
            if msg.member == "NameOwnerChanged" and msg.sender == "org.freedesktop.DBus":
                name, _old, new = msg.body
                if not new and name.startswith(":"):
                    self._client_left(name)
            return False
        if msg.message_type is not MessageType.METHOD_CALL:
            return False
        sender = msg.sender or ""
        SENDER.set(sender)
        path = msg.path or "/"
        interface = msg.interface or ""
        if self.options.record_calls:
            self.calls.append(
                RecordedCall(
                    sender,
                    interface,
                    msg.member or "",
                    path,
                    msg.signature,
                    summarise_options(msg.body),
                )
            )
        if path.startswith("/org/bluez/") and path not in self._exported:
            self.bus.send(
                Message.new_error(
                    msg,
                    UNKNOWN_OBJECT,
                    f'Method "{msg.member}" with signature "{msg.signature}" on interface '
                    f'"{interface}" doesn\'t exist',
                )
            )
            return True
        if interface == CHARACTERISTIC_INTERFACE and msg.member == "AcquireNotify":
            char = self._chars_by_path.get(path)
            if char is None:
                return False
            self.spawn(self._acquire_notify(char, msg, sender))
            return True
        return False

    async def _acquire_notify(self, char: CharacteristicNode, msg: Message, sender: str) -> None:
        try:
            fd, mtu = await char.acquire_notify(sender)
        except DBusError as err:
            self.bus.send(Message.new_error(msg, err.type, err.text))
            return
        except Exception:
            # never leave the caller waiting for a reply
            log.warning("sim.acquire_notify_failed", exc_info=True)
            self.bus.send(Message.new_error(msg, "org.bluez.Error.Failed", "Operation failed"))
            return
        try:
            await self.bus.send(Message.new_method_return(msg, "hq", [0, mtu], [fd]))
        finally:
            # The receiver has its own copy once the message is written.
            os.close(fd)

    def _client_left(self, name: str) -> None:
        self.agents.client_left(name)
        for adapter in self.registry.adapters.values():
            adapter.client_left(name)
        for node in self.registry.all_nodes():
            node.client_left(name)
