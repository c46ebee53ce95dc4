"""The client double, shaped like ``bleak.BleakClient``: connect, pair, GATT, notifications,
with bleak's retries (``InProgress``, ``le-connection-abort-by-local``) on the fleet's clock."""

# bleak's own signatures take ``timeout`` arguments; the double keeps them.

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.service import BleakGATTServiceCollection
from bleak.exc import BleakCharacteristicNotFoundError, BleakError
from bleak.uuids import normalize_uuid_str

from edge.clock import with_timeout
from firmware_sim.devices.base import ABORT_BY_LOCAL, SimDevice
from firmware_sim.inprocess.agent import pair_through_agent
from firmware_sim.inprocess.errors import not_found, raise_as_bleak
from firmware_sim.inprocess.events import Observer, plain_callback
from firmware_sim.inprocess.objects import service_collection
from firmware_sim.model.contract import PeripheralError, SimErrorCode

if TYPE_CHECKING:
    from firmware_sim.inprocess.binding import SimBleak

#: bleak polls a read or write answered ``InProgress`` this often
_INPROGRESS_RETRY_S = 0.01
#: and retries a connect aborted by the local controller after this pause
_CONNECT_RETRY_S = 0.1

T = TypeVar("T")

NotifyCallback = Callable[[BleakGATTCharacteristic, bytearray], Awaitable[None] | None]


class SimBleakClient:
    """Shaped like ``bleak.BleakClient``; use the class bound to a fleet, ``SimBleak(f).Client``."""

    _sim: ClassVar[SimBleak | None] = None

    def __init__(
        self,
        address_or_ble_device: BLEDevice | str,
        disconnected_callback: Callable[[SimBleakClient], None] | None = None,
        services: Any = None,
        *,
        timeout: float = 30,
        pair: bool = False,
        sim: SimBleak | None = None,
        **kwargs: Any,
    ) -> None:
        bound = sim or type(self)._sim
        if bound is None:
            raise BleakError("SimBleakClient is not bound to a fleet; use SimBleak(fleet).Client")
        self._bound = bound
        if isinstance(address_or_ble_device, BLEDevice):
            self.address = address_or_ble_device.address
            self._known = True
        else:
            self.address = address_or_ble_device
            self._known = False
        self._disconnected_callback = disconnected_callback
        self._timeout = timeout
        self._pair_before_connect = pair
        self._device: SimDevice | None = None
        self._connected = False
        self._services: BleakGATTServiceCollection | None = None
        self._callbacks: dict[int, Callable[[bytearray], None]] = {}
        self._remove_observer: Callable[[], None] | None = None

    def __str__(self) -> str:
        return f"{self.__class__.__name__}, {self.address}"

    async def __aenter__(self) -> SimBleakClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.disconnect()

    @property
    def name(self) -> str:
        if self._device is None:
            raise BleakError("Not connected")
        return self._device.name

    @property
    def mtu_size(self) -> int:
        return 23

    @property
    def is_connected(self) -> bool:
        return self._connected

    @property
    def services(self) -> BleakGATTServiceCollection:
        if not self._services:
            raise BleakError("Service Discovery has not been performed yet")
        return self._services

    async def connect(self, **kwargs: Any) -> None:
        """Connect (and pair first if constructed with ``pair=True``). Retries
        ``le-connection-abort-by-local`` like bleak, within the timeout (fleet clock)."""
        if self._connected:
            raise BleakError("Client is already connected")
        timeout = float(kwargs.get("timeout", self._timeout))
        fleet = self._bound.fleet
        if not self._known:
            found = await self._bound.Scanner.find_device_by_address(self.address, timeout)
            if found is None:
                raise not_found(self.address)
            self._known = True
        device = fleet.find(self.address)
        if device is None:
            raise not_found(self.address, removed=True)
        await with_timeout(self._bound.fleet.clock, timeout, self._connect_loop(device))
        self._device = device
        self._connected = True
        self._callbacks = {}
        self._remove_observer = device.add_events(
            Observer(notify=self._on_notify, disconnected=self._on_dropped)
        )
        self._services = service_collection(device)

    async def _connect_loop(self, device: SimDevice) -> None:
        while True:
            try:
                if self._pair_before_connect and not device.paired:
                    await self._pair(device)
                else:
                    await device.connect()
                return
            except PeripheralError as e:
                if e.code is SimErrorCode.FAILED and e.message == ABORT_BY_LOCAL:
                    await self._bound.fleet.clock.sleep(_CONNECT_RETRY_S)
                    continue
                if e.code is SimErrorCode.UNKNOWN_OBJECT:
                    raise not_found(self.address, removed=True) from e
                raise_as_bleak(e)

    async def disconnect(self) -> None:
        """Disconnect; the disconnected callback runs as with bleak."""
        if not self._connected or self._device is None:
            return
        try:
            await self._device.disconnect()
        except PeripheralError as e:
            self._teardown(notify=True)
            raise_as_bleak(e)
        self._teardown(notify=True)

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        """Pair (bond) with the device, asking the double's agent as bluetoothd asks the
        registered one; no-op if already paired. Fails as bleak does for BlueZ's
        ``AuthenticationFailed`` / ``AuthenticationCanceled`` / ``AuthenticationTimeout``."""
        device = self._device or self._bound.fleet.find(self.address)
        if device is None:
            raise not_found(self.address)
        if device.paired:
            return
        try:
            await self._pair(device)
        except PeripheralError as e:
            raise_as_bleak(e)

    async def _pair(self, device: SimDevice) -> None:
        bound = self._bound
        await pair_through_agent(device, bound.agent, bound.fleet.clock, bound.agent_timeout_s)

    async def unpair(self) -> None:
        """Remove the bond (and the link)."""
        device = self._device or self._bound.fleet.find(self.address)
        self._teardown(notify=False)
        self._known = False
        if device is None:
            raise not_found(self.address)
        try:
            await device.unpair()
        except PeripheralError as e:
            if e.code is SimErrorCode.DOES_NOT_EXIST:
                raise not_found(self.address) from e
            raise_as_bleak(e)

    # GATT -------------------------------------------------------------------

    def _resolve(
        self, spec: BleakGATTCharacteristic | int | str | uuid.UUID
    ) -> BleakGATTCharacteristic:
        if isinstance(spec, BleakGATTCharacteristic):
            return spec
        ch = self.services.get_characteristic(spec)
        if ch is None:
            raise BleakCharacteristicNotFoundError(spec)
        return ch

    def _live(self) -> SimDevice:
        if not self._connected or self._device is None:
            raise BleakError("Not connected")
        return self._device

    async def read_gatt_char(
        self,
        char_specifier: BleakGATTCharacteristic | int | str | uuid.UUID,
        *,
        use_cached: bool = False,
        **kwargs: Any,
    ) -> bytearray:
        ch = self._resolve(char_specifier)
        return bytearray(await self._retrying(lambda device: device.read(ch.handle)))

    async def write_gatt_char(
        self,
        char_specifier: BleakGATTCharacteristic | int | str | uuid.UUID,
        data: bytes | bytearray | memoryview,
        response: bool | None = None,
    ) -> None:
        ch = self._resolve(char_specifier)
        with_response = "write" in ch.properties if response is None else response
        await self._retrying(
            lambda device: device.write(ch.handle, bytes(data), with_response=with_response)
        )

    async def _retrying(self, op: Callable[[SimDevice], Awaitable[T]]) -> T:
        """``op`` on the connected device; ``InProgress`` is retried, as bleak does."""
        while True:
            device = self._live()
            try:
                return await op(device)
            except PeripheralError as e:
                if e.code is SimErrorCode.IN_PROGRESS:
                    await self._bound.fleet.clock.sleep(_INPROGRESS_RETRY_S)
                    continue
                raise_as_bleak(e, gatt=True)

    async def start_notify(
        self,
        char_specifier: BleakGATTCharacteristic | int | str | uuid.UUID,
        callback: NotifyCallback,
        **kwargs: Any,
    ) -> None:
        if not self.is_connected:
            raise BleakError("Not connected")
        ch = self._resolve(char_specifier)
        self._callbacks[ch.handle] = plain_callback(callback, ch)
        try:
            await self._live().start_notify(ch.handle)
        except PeripheralError as e:
            raise_as_bleak(e, gatt=True, start_notify=True)

    async def stop_notify(
        self, char_specifier: BleakGATTCharacteristic | int | str | uuid.UUID
    ) -> None:
        ch = self._resolve(char_specifier)
        device = self._live()
        try:
            await device.stop_notify(ch.handle)
        except PeripheralError as e:
            raise_as_bleak(e)
        self._callbacks.pop(ch.handle, None)

    async def read_gatt_descriptor(
        self, desc_specifier: BleakGATTDescriptor | int, *, use_cached: bool = False, **kw: Any
    ) -> bytearray:
        desc = self._resolve_descriptor(desc_specifier)
        device = self._live()
        try:
            return bytearray(await device.read_descriptor(desc.handle))
        except PeripheralError as e:
            raise_as_bleak(e, gatt=True)

    async def write_gatt_descriptor(
        self, desc_specifier: BleakGATTDescriptor | int, data: bytes | bytearray
    ) -> None:
        desc = self._resolve_descriptor(desc_specifier)
        if desc.uuid == normalize_uuid_str("2902"):
            raise ValueError(
                "Cannot write to CCCD (0x2902) directly. Use start_notify() or stop_notify() "
                "instead."
            )
        device = self._live()
        try:
            await device.write_descriptor(desc.handle, bytes(data))
        except PeripheralError as e:
            raise_as_bleak(e, gatt=True)

    def _resolve_descriptor(self, spec: BleakGATTDescriptor | int) -> BleakGATTDescriptor:
        if isinstance(spec, BleakGATTDescriptor):
            return spec
        desc = self.services.get_descriptor(spec)
        if desc is None:
            raise BleakError(f"Descriptor with handle {spec} was not found!")
        return desc

    # events -----------------------------------------------------------------

    def _on_notify(self, handle: int, value: bytes) -> None:
        cb = self._callbacks.get(handle)
        if cb is not None and self._connected:
            cb(bytearray(value))

    def _on_dropped(self, reason: str) -> None:
        if self._connected:
            self._teardown(notify=True)

    def _teardown(self, *, notify: bool) -> None:
        was = self._connected
        self._connected = False
        self._services = None
        self._callbacks = {}
        if self._remove_observer is not None:
            self._remove_observer()
            self._remove_observer = None
        if was and notify and self._disconnected_callback is not None:
            self._disconnected_callback(self)
