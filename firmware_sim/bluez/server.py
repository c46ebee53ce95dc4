"""A fake ``bluetoothd``: serves simulated peripherals as ``org.bluez`` on a D-Bus.

The object tree is BlueZ's: ``/org/bluez/hci0`` (Adapter1), ``…/dev_AA_BB_CC_DD_EE_FF``
(Device1) and, while connected, ``…/serviceXXXX``, ``…/charXXXX``, ``…/descXXXX`` named after
the attribute handles (bleak parses them back out of the paths). ObjectManager and
Properties are dbus-fast's; InterfacesAdded/Removed come from exporting and unexporting.

Behaviour that real BlueZ shows but tests often do not want is behind :class:`BlueZOptions`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import re
import socket
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dbus_fast import BusType, DBusError, Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.constants import NameFlag, RequestNameReply
from dbus_fast.service import ServiceInterface

from firmware_sim.bluez.errors import UNKNOWN_OBJECT, bluez_error, to_dbus_error
from firmware_sim.bluez.objects import (
    CHARACTERISTIC_INTERFACE,
    AdapterInterface,
    AgentManagerInterface,
    DeviceInterface,
    GattCharacteristicInterface,
    GattDescriptorInterface,
    GattServiceInterface,
    IndicatingCharacteristicInterface,
    NotifyingCharacteristicInterface,
    option,
)
from firmware_sim.model.contract import (
    Advertisement,
    CharacteristicSpec,
    DescriptorSpec,
    Peripheral,
    ServiceSpec,
    SimError,
    uuid16,
)

if TYPE_CHECKING:
    from firmware_sim.fleet import Fleet, SimDevice

log = logging.getLogger(__name__)

BLUEZ_SERVICE = "org.bluez"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
CCCD_UUID = uuid16(0x2902)
DEFAULT_ADAPTER_ADDRESS = "00:1A:7D:DA:71:13"
LE_ABORT = "le-connection-abort-by-local"
#: seconds after StartDiscovery when every device is heard a second time
_FIRST_REPEAT = 0.1

#: Unique bus name of the client whose method call is being served (set by the message filter
#: before dbus-fast dispatches; tasks created for coroutine methods inherit it).
_SENDER: contextvars.ContextVar[str] = contextvars.ContextVar("fake_bluez_sender", default="")


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
    #: record every method call received (for the bleak canary test)
    record_calls: bool = False


@dataclass(frozen=True)
class RecordedCall:
    """A method call the fake received. ``options`` summarises dict arguments (``a{sv}``):
    ``key=value`` for plain values, ``key`` alone for the rest."""

    sender: str
    interface: str
    member: str
    path: str
    signature: str
    options: tuple[str, ...] = ()

    @property
    def shape(self) -> str:
        """``Interface.Member(signature){options} path`` with the device address and the
        attribute handles replaced by placeholders."""
        path = re.sub(r"dev_[0-9A-F_]{17}", "dev_X", self.path)
        path = re.sub(r"(service|char|desc)[0-9a-f]{4}", r"\1N", path)
        opts = "{" + ",".join(self.options) + "}" if self.options else ""
        return f"{self.interface}.{self.member}({self.signature}){opts} {path}"


def _summarise_options(body: list[Any]) -> tuple[str, ...]:
    out: list[str] = []
    for arg in body:
        value = arg.value if isinstance(arg, Variant) else arg
        if isinstance(value, dict):
            for key in sorted(value):
                item = value[key].value if isinstance(value[key], Variant) else value[key]
                out.append(f"{key}={item}" if isinstance(item, str | bool | int) else str(key))
        elif isinstance(value, str | bool | int):
            # e.g. Properties.Set's interface, name and value; RemoveDevice's path
            out.append(re.sub(r"dev_[0-9A-F_]{17}", "dev_X", str(value)))
    return tuple(out)


@dataclass
class _DiscoveryFilter:
    uuids: frozenset[str] = frozenset()
    rssi: int | None = None
    pattern: str = ""

    def matches(self, address: str, adv: Advertisement) -> bool:
        """Whether a device advertising ``adv`` passes this filter."""
        if self.uuids and not self.uuids & {_norm_uuid(u) for u in adv.service_uuids}:
            return False
        if self.rssi is not None and adv.rssi < self.rssi:
            return False
        return (
            not self.pattern
            or address.startswith(self.pattern)
            or adv.name.startswith(self.pattern)
        )


def _norm_uuid(value: str) -> str:
    value = value.lower()
    if len(value) == 4:
        return uuid16(int(value, 16))
    if len(value) == 8:
        return f"{value}-0000-1000-8000-00805f9b34fb"
    return value


def _device_path(adapter_path: str, address: str) -> str:
    return f"{adapter_path}/dev_{address.upper().replace(':', '_')}"


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
        self.adapter = AdapterNode(self)
        self._devices: dict[str, DeviceNode] = {}
        self._exported: set[str] = set()
        self._chars_by_path: dict[str, CharacteristicNode] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.calls: list[RecordedCall] = []
        for peripheral in peripherals:
            self.add_peripheral(peripheral)

    # lifecycle -----------------------------------------------------------------------------

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
        self._export("/org/bluez", AgentManagerInterface())
        self._export(self.adapter.path, self.adapter.iface)
        for node in self._devices.values():
            if node.peripheral.paired:
                node.export()
        reply = await bus.request_name(BLUEZ_SERVICE, NameFlag.DO_NOT_QUEUE)
        if reply is not RequestNameReply.PRIMARY_OWNER:
            bus.disconnect()
            self._bus = None
            raise RuntimeError("org.bluez is already owned on this bus")
        log.info("sim.bluez_started")

    async def stop(self) -> None:
        """End notify sessions, stop timers, detach from the peripherals and leave the bus.
        (Links the peripherals hold stay theirs to drop: ``Fleet.stop`` does.)"""
        self.adapter.shutdown()
        for node in list(self._devices.values()):
            node.shutdown()
            node.peripheral.set_events(None)
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
    def devices(self) -> list[DeviceNode]:
        """The device nodes, in insertion order."""
        return list(self._devices.values())

    def device(self, address: str) -> DeviceNode:
        """The node of the device with ``address``."""
        return self._devices[address.upper()]

    def device_path(self, address: str) -> str:
        """The D-Bus object path BlueZ would give the device with ``address``."""
        return _device_path(self.adapter.path, address)

    def add_peripheral(self, peripheral: Peripheral) -> DeviceNode:
        """Serve ``peripheral``; it shows up at the next discovery (or now, if discovering)."""
        key = peripheral.address.upper()
        if key in self._devices:
            raise ValueError("a device with this address is already served")
        node = DeviceNode(self, peripheral)
        self._devices[key] = node
        peripheral.set_events(node)
        if self._bus is not None and self.adapter.discovering:
            self.adapter.announce(node)
        return node

    def follow(self, fleet: Fleet) -> Callable[[], None]:
        """Serve every device of ``fleet`` and follow its additions and removals. Returns a
        function that stops following (the devices stay served)."""
        for device in fleet.devices:
            if device.address.upper() not in self._devices:
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
        node = self._devices.pop(address.upper(), None)
        if node is None:
            return
        node.peripheral.set_events(None)
        node.shutdown()
        node._link_down()  # as bluetoothd: the link goes before the object
        node.unexport()

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

    def _export(self, path: str, iface: Any) -> None:
        if self._bus is None:
            return
        self._bus.export(path, iface)
        self._exported.add(path)
        if isinstance(iface, GattCharacteristicInterface):
            self._chars_by_path[path] = iface._node

    def _unexport(self, path: str) -> None:
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
        _SENDER.set(sender)
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
                    _summarise_options(msg.body),
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
        self.adapter.client_left(name)
        for node in self._devices.values():
            node.client_left(name)


class AdapterNode:
    """State and behaviour of ``org.bluez.Adapter1``."""

    def __init__(self, server: FakeBlueZ) -> None:
        self.server = server
        self.path = f"/org/bluez/{server.options.adapter}"
        self.address = server.options.adapter_address
        self.name = f"sim-{server.options.adapter}"
        self.iface = AdapterInterface(self)
        self._filters: dict[str, _DiscoveryFilter] = {}
        self._sessions: set[str] = set()
        self._ticker: asyncio.Task[None] | None = None

    @property
    def discovering(self) -> bool:
        """Whether any client's discovery session is active."""
        return bool(self._sessions)

    def set_discovery_filter(self, props: dict[str, Variant]) -> None:
        """Adapter1.SetDiscoveryFilter: the calling client's filter (UUIDs, RSSI, Pattern)."""
        sender = _SENDER.get()
        uuids = option(props, "UUIDs", [])
        rssi = option(props, "RSSI", None)
        pattern = option(props, "Pattern", "")
        transport = option(props, "Transport", "auto")
        if transport not in ("auto", "le", "bredr"):
            raise bluez_error("InvalidArguments", "Invalid arguments in method call")
        self._filters[sender] = _DiscoveryFilter(
            frozenset(_norm_uuid(u) for u in uuids), rssi, pattern
        )

    def start_discovery(self) -> None:
        """Adapter1.StartDiscovery: a session for the caller; visible, wanted devices appear."""
        sender = _SENDER.get()
        if sender in self._sessions:
            raise bluez_error("InProgress", "Operation already in progress")
        was = self.discovering
        self._sessions.add(sender)
        if not was:
            self.iface.emit_properties_changed({"Discovering": True})
            if self.server.options.advertising_interval is not None:
                self._ticker = self.server.spawn(
                    self._advertise(self.server.options.advertising_interval)
                )
        for node in self.server.devices:
            node.cancel_removal()
            self.announce(node)

    def stop_discovery(self) -> None:
        """Adapter1.StopDiscovery: end the caller's session."""
        sender = _SENDER.get()
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
        for node in self.server.devices:
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
        filters = [self._filters.get(s, _DiscoveryFilter()) for s in self._sessions]
        return any(f.matches(node.address, node.adv) for f in filters)

    def announce(self, node: DeviceNode) -> None:
        """Report ``node`` as advertising if it is visible and wanted: InterfacesAdded the
        first time, a PropertiesChanged (RSSI and friends) afterwards."""
        if node.connected or not node.peripheral.visible:
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
            for node in self.server.devices:
                if node.announced_at <= stale_before:
                    self.announce(node)
            wait = interval

    async def remove_device(self, path: str) -> None:
        """Adapter1.RemoveDevice."""
        node = next((n for n in self.server.devices if n.path == path and n.exported), None)
        if node is None:
            raise bluez_error("DoesNotExist", "Does Not Exist")
        await node.remove()


class DeviceNode:
    """State and behaviour of one ``org.bluez.Device1`` and its GATT objects.

    It is also the peripheral's :class:`~firmware_sim.model.contract.PeripheralEvents` sink.
    """

    def __init__(self, server: FakeBlueZ, peripheral: Peripheral) -> None:
        self.server = server
        self.peripheral = peripheral
        self.address = peripheral.address.upper()
        self.address_type = peripheral.address_type
        self.adapter_path = server.adapter.path
        self.path = _device_path(self.adapter_path, self.address)
        self.iface = DeviceInterface(self)
        self.adv = peripheral.advertisement()
        self.announced_at = 0.0
        self.connected = False
        self.services_resolved = False
        self.paired = peripheral.paired
        self.trusted = False
        #: a device only seen in a scan; bluetoothd forgets these (see schedule_removal)
        self.temporary = not self.paired
        self.exported = False
        self._gatt_exported = False
        self._gatt_uuids: list[str] = []
        self.services: list[ServiceNode] = []
        self.characteristics: dict[int, CharacteristicNode] = {}
        self._connecting = False
        self._pairing: asyncio.Task[None] | None = None
        self._pair_cancelled = False
        self._removal: asyncio.TimerHandle | None = None
        self._build_gatt()

    def _build_gatt(self) -> None:
        for spec in self.peripheral.services():
            service = ServiceNode(self, spec)
            self.services.append(service)
            for char in service.characteristics:
                self.characteristics[char.spec.handle] = char

    # exported state ------------------------------------------------------------------------

    def uuids(self) -> list[str]:
        """Advertised service UUIDs, plus the GATT services once resolved (as BlueZ does)."""
        found = [_norm_uuid(u) for u in self.adv.service_uuids]
        for uuid in self._gatt_uuids:
            if uuid not in found:
                found.append(uuid)
        return found

    def export(self) -> None:
        """Put the Device1 object on the bus (InterfacesAdded)."""
        if self.exported:
            return
        self.exported = True
        self.server._export(self.path, self.iface)

    def unexport(self) -> None:
        """Remove the device and its GATT objects from the bus."""
        self.cancel_removal()
        self._unexport_gatt()
        if self.exported:
            self.exported = False
            self.server._unexport(self.path)

    def _export_gatt(self) -> None:
        if self._gatt_exported:
            return
        self._gatt_exported = True
        for service in self.services:
            self.server._export(service.path, service.iface)
            for char in service.characteristics:
                self.server._export(char.path, char.iface)
                for desc in char.descriptors:
                    self.server._export(desc.path, desc.iface)

    def _unexport_gatt(self) -> None:
        if not self._gatt_exported:
            return
        self._gatt_exported = False
        for service in reversed(self.services):
            for char in service.characteristics:
                for desc in char.descriptors:
                    self.server._unexport(desc.path)
                self.server._unexport(char.path)
            self.server._unexport(service.path)

    def set_trusted(self, value: bool) -> None:
        """The ``Trusted`` property setter (bleak sets it before Pair)."""
        if value:
            self.temporary = False
        if value != self.trusted:
            self.trusted = value
            self.iface.emit_properties_changed({"Trusted": value})

    def _set(self, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(self, key, value)
        names = {"connected": "Connected", "services_resolved": "ServicesResolved"}
        self.iface.emit_properties_changed({names[k]: v for k, v in changes.items()})

    # temporary devices ----------------------------------------------------------------------

    def schedule_removal(self, delay: float) -> None:
        """Forget this temporary device after ``delay`` seconds."""
        if self.connected or not self.temporary:
            return
        self.cancel_removal()
        loop = asyncio.get_running_loop()
        self._removal = loop.call_later(delay, self._expire)

    def cancel_removal(self) -> None:
        """Keep the device after all."""
        if self._removal is not None:
            self._removal.cancel()
            self._removal = None

    def _expire(self) -> None:
        self._removal = None
        if self.temporary and not (self.connected or self.server.adapter.discovering):
            self.unexport()

    # Device1 methods ---------------------------------------------------------------------------

    def not_supported(self) -> None:
        """For methods the fake does not implement."""
        raise bluez_error("NotSupported", "Operation is not supported")

    async def connect(self) -> None:
        """Device1.Connect: link up, GATT objects, then ServicesResolved."""
        if self.connected:
            return
        if self._connecting:
            # A second Connect while one is under way, as bluetoothd answers it.
            raise bluez_error("InProgress", "In Progress")
        self.cancel_removal()
        self.temporary = False  # as bluetoothd's Connect does
        self._connecting = True
        try:
            await self.peripheral.connect()
        except SimError as err:
            if LE_ABORT in err.message:
                # bluetoothd reports the link that came up and went down again; bleak waits
                # for Connected to drop before retrying.
                self._set(connected=True)
                self._set(connected=False)
            raise to_dbus_error(err) from err
        finally:
            self._connecting = False
        self._link_up()

    def _link_up(self) -> None:
        self._set(connected=True)
        self._export_gatt()
        previous = self.uuids()
        self._gatt_uuids = [_norm_uuid(s.spec.uuid) for s in self.services if s.spec.primary]
        if self.uuids() != previous:
            self.iface.emit_properties_changed({"UUIDs": self.uuids()})
        self._set(services_resolved=True)

    def _link_down(self) -> None:
        if not self.connected:
            return
        for char in self.characteristics.values():
            char.link_down()
        self._set(services_resolved=False)
        if not self.server.options.keep_gatt_after_disconnect:
            self._unexport_gatt()
        self._set(connected=False)
        timeout = self.server.options.temporary_device_timeout
        if timeout is not None and not self.server.adapter.discovering:
            self.schedule_removal(timeout)

    async def disconnect(self) -> None:
        """Device1.Disconnect (also cancels a pairing under way)."""
        if self._pairing is not None:
            self._pair_cancelled = True
            self._pairing.cancel()
        if not self.connected:
            return
        try:
            await self.peripheral.disconnect()
        except SimError as err:
            raise to_dbus_error(err) from err
        finally:
            self._link_down()

    async def pair(self) -> None:
        """Device1.Pair: connects first if needed, as bluetoothd does."""
        if self.paired:
            raise bluez_error("AlreadyExists", "Already Exists")
        if self._pairing is not None:
            raise bluez_error("InProgress", "In Progress")
        if not self.connected:
            await self.connect()
        self._pair_cancelled = False
        self._pairing = asyncio.get_running_loop().create_task(self.peripheral.pair())
        try:
            await self._pairing
        except asyncio.CancelledError:
            if not self._pair_cancelled:
                raise
            raise bluez_error("AuthenticationCanceled", "Authentication Canceled") from None
        except SimError as err:
            raise to_dbus_error(err) from err
        finally:
            self._pairing = None
        self.paired = True
        self.cancel_removal()
        self.iface.emit_properties_changed({"Paired": True, "Bonded": True})

    def cancel_pairing(self) -> None:
        """Device1.CancelPairing."""
        if self._pairing is None:
            raise bluez_error("DoesNotExist", "Does Not Exist")
        self._pair_cancelled = True
        self._pairing.cancel()

    async def remove(self) -> None:
        """Adapter1.RemoveDevice: drop the link, forget the bond, remove the objects."""
        if self.connected:
            with contextlib.suppress(SimError):
                await self.peripheral.disconnect()
            self._link_down()
        if self.paired or self.peripheral.paired:
            with contextlib.suppress(SimError):
                await self.peripheral.unpair()
        self.paired = False
        self.trusted = False
        self.temporary = True
        self.unexport()

    # PeripheralEvents -------------------------------------------------------------------------

    def notify(self, handle: int, value: bytes) -> None:
        """PeripheralEvents: a notification or indication."""
        char = self.characteristics.get(handle)
        if char is not None and self.connected:
            char.deliver(value)

    def disconnected(self, reason: str) -> None:
        """PeripheralEvents: the device dropped the link."""
        log.debug("sim.link_dropped reason=%s", reason)
        self._link_down()

    def advertisement_changed(self) -> None:
        """PeripheralEvents: re-announce while discovering."""
        if self.server._bus is not None and self.server.adapter.discovering:
            self.server.adapter.announce(node=self)

    # housekeeping -----------------------------------------------------------------------------

    def client_left(self, name: str) -> None:
        """A client left the bus: its notify sessions end."""
        for char in self.characteristics.values():
            char.client_left(name)

    def shutdown(self) -> None:
        """Stop timers and pairing, end notify sessions."""
        self.cancel_removal()
        if self._pairing is not None:
            self._pairing.cancel()
        for char in self.characteristics.values():
            char.link_down()


class ServiceNode:
    """A ``GattService1`` object."""

    def __init__(self, device: DeviceNode, spec: ServiceSpec) -> None:
        self.device = device
        self.spec = spec
        self.device_path = device.path
        self.path = f"{device.path}/service{spec.handle:04x}"
        self.iface = GattServiceInterface(self)
        self.characteristics = [CharacteristicNode(self, c) for c in spec.characteristics]


class CharacteristicNode:
    """A ``GattCharacteristic1`` object with its notify sessions."""

    def __init__(self, service: ServiceNode, spec: CharacteristicSpec) -> None:
        self.service = service
        self.device = service.device
        self.spec = spec
        self.service_path = service.path
        self.path = f"{service.path}/char{spec.handle:04x}"
        self.can_notify = bool({"notify", "indicate"} & spec.flags)
        # AcquireNotify is for notifications only, as in bluetoothd (src/gatt-client.c)
        self.can_acquire = "notify" in spec.flags
        self.iface: GattCharacteristicInterface
        if self.can_acquire:
            self.iface = NotifyingCharacteristicInterface(self)
        elif self.can_notify:
            self.iface = IndicatingCharacteristicInterface(self)
        else:
            self.iface = GattCharacteristicInterface(self)
        self.descriptors = [DescriptorNode(self, d) for d in spec.descriptors]
        self.value = b""
        self.notifying = False
        self.notify_acquired = False
        self._sessions: set[str] = set()
        self._sock: socket.socket | None = None
        self._subscribed = False

    def flags(self) -> list[str]:
        """BlueZ's ``Flags``, in BlueZ's order."""
        order = (
            "broadcast",
            "read",
            "write-without-response",
            "write",
            "notify",
            "indicate",
            "authenticated-signed-writes",
            "extended-properties",
            "reliable-write",
            "writable-auxiliaries",
        )
        known = [f for f in order if f in self.spec.flags]
        return known + sorted(self.spec.flags - set(order))

    def mtu(self) -> int:
        """The ATT MTU the peripheral uses (23 unless it says otherwise)."""
        value = getattr(self.device.peripheral, "mtu", 23)
        return int(value) if isinstance(value, int) else 23

    async def read_value(self, options: dict[str, Variant]) -> bytes:
        """GattCharacteristic1.ReadValue (honours ``offset``)."""
        peripheral = self.device.peripheral
        value = await _read_value(self.device, peripheral.read, self.spec.handle, options)
        if self.device.server.options.read_emits_value:
            self.value = value
            self.iface.emit_properties_changed({"Value": value})
        return value

    async def write_value(self, value: bytes, options: dict[str, Variant]) -> None:
        """GattCharacteristic1.WriteValue, choosing the ATT procedure as bluetoothd does:
        a request for ``type=request`` (or no type and the ``write`` flag), a command for
        ``type=command`` (or no type and ``write-without-response``), else NotSupported."""
        _require_link(self.device)
        kind = str(option(options, "type", "")).lower()
        offset = int(option(options, "offset", 0))
        flags = self.spec.flags
        if kind in ("request", "reliable") or (not kind and {"write", "reliable-write"} & flags):
            try:
                await self.device.peripheral.write(self.spec.handle, value, with_response=True)
            except SimError as err:
                raise to_dbus_error(err) from err
            return
        if (
            (kind and kind != "command")
            or offset
            or (not kind and "write-without-response" not in flags)
        ):
            raise bluez_error("NotSupported", "Operation is not supported")
        # A write command has no ATT response: bluetoothd cannot report failures.
        try:
            await self.device.peripheral.write(self.spec.handle, value, with_response=False)
        except SimError as err:
            log.debug("sim.write_command_dropped code=%s", err.code.value)

    async def _subscribe(self) -> None:
        if self._subscribed:
            return
        try:
            await self.device.peripheral.start_notify(self.spec.handle)
        except SimError as err:
            raise to_dbus_error(err) from err
        self._subscribed = True

    async def _unsubscribe_if_idle(self) -> None:
        if self._sessions or self._sock is not None or not self._subscribed:
            return
        self._subscribed = False
        if self.notifying:
            self.notifying = False
            self.iface.emit_properties_changed({"Notifying": False})
        if self.device.connected:
            with contextlib.suppress(SimError):
                await self.device.peripheral.stop_notify(self.spec.handle)

    async def start_notify(self) -> None:
        """GattCharacteristic1.StartNotify: values as PropertiesChanged."""
        _require_link(self.device)
        if not self.can_notify:
            raise bluez_error("NotSupported", "Operation is not supported")
        if self.notify_acquired:
            raise bluez_error("NotPermitted", "Notify acquired")
        sender = _SENDER.get()
        if sender in self._sessions:
            return
        await self._subscribe()
        self._sessions.add(sender)
        if not self.notifying:
            self.notifying = True
            self.iface.emit_properties_changed({"Notifying": True})

    async def stop_notify(self) -> None:
        """GattCharacteristic1.StopNotify for the calling client (or, as bluetoothd does,
        whoever holds the AcquireNotify socket)."""
        if self._sock is not None:
            self._release_socket()
            await self._unsubscribe_if_idle()
            return
        sender = _SENDER.get()
        if sender not in self._sessions:
            raise bluez_error("Failed", "No notify session started")
        self._sessions.discard(sender)
        await self._unsubscribe_if_idle()

    async def acquire_notify(self, sender: str) -> tuple[int, int]:
        """AcquireNotify: a SOCK_SEQPACKET pair; the caller sends the returned fd and closes it."""
        _require_link(self.device)
        if self.notify_acquired:
            raise bluez_error("NotPermitted", "Notify acquired")
        if self._sessions:
            # "Each client can only have one active notify session."
            raise bluez_error("InProgress", "In Progress")
        if not self.can_acquire:
            raise bluez_error("NotSupported", "Operation is not supported")
        await self._subscribe()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        self._sock = ours
        asyncio.get_running_loop().add_reader(ours.fileno(), self._on_socket_readable)
        self.notify_acquired = True
        # bluetoothd leaves ``Notifying`` alone for an acquired socket; only this changes
        self.iface.emit_properties_changed({"NotifyAcquired": True})
        return theirs.detach(), self.mtu()

    def _on_socket_readable(self) -> None:
        # The client never writes; readability means it closed its end (bleak's stop_notify).
        sock = self._sock
        if sock is None:
            return
        try:
            data = sock.recv(1)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._release_socket()
            self.device.server.spawn(self._unsubscribe_if_idle())

    def _release_socket(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(sock.fileno())
        sock.close()
        if self.notify_acquired:
            self.notify_acquired = False
            self.iface.emit_properties_changed({"NotifyAcquired": False})

    def deliver(self, value: bytes) -> None:
        """A notification/indication from the peripheral."""
        value = bytes(value)
        if self._sock is not None:
            try:
                self._sock.send(value)
            except BlockingIOError:
                log.debug("sim.notify_socket_full")
            except OSError:
                self._release_socket()
        if self._sessions:
            self.value = value
            self.iface.emit_properties_changed({"Value": value})

    def link_down(self) -> None:
        """The link went: every session ends, the socket closes."""
        self._sessions.clear()
        self._release_socket()
        self._subscribed = False
        if self.notifying:
            self.notifying = False
            self.iface.emit_properties_changed({"Notifying": False})

    def client_left(self, name: str) -> None:
        """A client left the bus: its session ends."""
        if name in self._sessions:
            self._sessions.discard(name)
            self.device.server.spawn(self._unsubscribe_if_idle())


class DescriptorNode:
    """A ``GattDescriptor1`` object."""

    def __init__(self, characteristic: CharacteristicNode, spec: DescriptorSpec) -> None:
        self.characteristic = characteristic
        self.device = characteristic.device
        self.spec = spec
        self.characteristic_path = characteristic.path
        self.path = f"{characteristic.path}/desc{spec.handle:04x}"
        self.iface = GattDescriptorInterface(self)
        self.value = b""

    async def read_value(self, options: dict[str, Variant]) -> bytes:
        """GattDescriptor1.ReadValue (honours ``offset``)."""
        peripheral = self.device.peripheral
        return await _read_value(self.device, peripheral.read_descriptor, self.spec.handle, options)

    async def write_value(self, value: bytes, options: dict[str, Variant]) -> None:
        """GattDescriptor1.WriteValue (never the CCCD, as in bluetoothd)."""
        _require_link(self.device)
        if _norm_uuid(self.spec.uuid) == CCCD_UUID:
            # bluetoothd manages the CCCD itself (StartNotify/StopNotify/AcquireNotify).
            raise bluez_error("NotPermitted", "Write not permitted")
        try:
            await self.device.peripheral.write_descriptor(self.spec.handle, value)
        except SimError as err:
            raise to_dbus_error(err) from err


def _require_link(device: DeviceNode) -> None:
    if not device.connected:
        raise bluez_error("Failed", "Not connected")


async def _read_value(
    device: DeviceNode,
    read: Callable[[int], Awaitable[bytes]],
    handle: int,
    options: dict[str, Variant],
) -> bytes:
    """ReadValue of a characteristic or descriptor: ``read(handle)`` on a live link, from
    the ``offset`` option on."""
    _require_link(device)
    offset = int(option(options, "offset", 0))
    try:
        value = await read(handle)
    except SimError as err:
        raise to_dbus_error(err) from err
    if offset > len(value):
        raise bluez_error("InvalidArguments", "Invalid offset")
    return bytes(value[offset:])
