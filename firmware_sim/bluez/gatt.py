"""GATT objects of a connected device: services, characteristics (with their notify sessions
and AcquireNotify sockets) and descriptors, each forwarding to the peripheral."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from dbus_fast import Variant

from firmware_sim.bluez.calls import SENDER
from firmware_sim.bluez.errors import bluez_error, to_dbus_error
from firmware_sim.bluez.interfaces import (
    GattCharacteristicInterface,
    GattDescriptorInterface,
    GattServiceInterface,
    IndicatingCharacteristicInterface,
    NotifyingCharacteristicInterface,
    option,
)
from firmware_sim.bluez.names import CCCD_UUID, norm_uuid
from firmware_sim.model.contract import (
    CharacteristicSpec,
    DescriptorSpec,
    PeripheralError,
    Security,
    ServiceSpec,
    SimErrorCode,
)

if TYPE_CHECKING:
    from firmware_sim.bluez.device import DeviceNode

log = logging.getLogger(__name__)


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

    def _require_bond(self, code: SimErrorCode, text: str = "") -> None:
        """An encrypted characteristic needs this adapter's bond: a device bonded through
        another adapter is not encrypted on this link (bonds are per adapter). The error is
        the one the device gives an unbonded link."""
        if self.spec.security is Security.ENCRYPTED and not self.device.paired:
            raise to_dbus_error(PeripheralError(code, text))

    async def read_value(self, options: dict[str, Variant]) -> bytes:
        """GattCharacteristic1.ReadValue (honours ``offset``)."""
        peripheral = self.device.peripheral
        _require_link(self.device)
        self._require_bond(SimErrorCode.NOT_AUTHORIZED)
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
            self._require_bond(SimErrorCode.NOT_PERMITTED, "Not paired")
            try:
                await self.device.peripheral.write(self.spec.handle, value, with_response=True)
            except PeripheralError as err:
                raise to_dbus_error(err) from err
            return
        if (
            (kind and kind != "command")
            or offset
            or (not kind and "write-without-response" not in flags)
        ):
            raise bluez_error("NotSupported", "Operation is not supported")
        # A write command has no ATT response: bluetoothd cannot report failures.
        if self.spec.security is Security.ENCRYPTED and not self.device.paired:
            log.debug("sim.write_command_dropped code=not_paired")
            return
        try:
            await self.device.peripheral.write(self.spec.handle, value, with_response=False)
        except PeripheralError as err:
            log.debug("sim.write_command_dropped code=%s", err.code.value)

    async def _subscribe(self) -> None:
        if self._subscribed:
            return
        self._require_bond(SimErrorCode.NOT_PERMITTED, "Not paired")
        try:
            await self.device.peripheral.start_notify(self.spec.handle)
        except PeripheralError as err:
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
            with contextlib.suppress(PeripheralError):
                await self.device.peripheral.stop_notify(self.spec.handle)

    async def start_notify(self) -> None:
        """GattCharacteristic1.StartNotify: values as PropertiesChanged."""
        _require_link(self.device)
        if not self.can_notify:
            raise bluez_error("NotSupported", "Operation is not supported")
        if self.notify_acquired:
            raise bluez_error("NotPermitted", "Notify acquired")
        sender = SENDER.get()
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
        sender = SENDER.get()
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
        if norm_uuid(self.spec.uuid) == CCCD_UUID:
            # bluetoothd manages the CCCD itself (StartNotify/StopNotify/AcquireNotify).
            raise bluez_error("NotPermitted", "Write not permitted")
        try:
            await self.device.peripheral.write_descriptor(self.spec.handle, value)
        except PeripheralError as err:
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
    except PeripheralError as err:
        raise to_dbus_error(err) from err
    if offset > len(value):
        raise bluez_error("InvalidArguments", "Invalid offset")
    return bytes(value[offset:])
