"""An in-process stand-in for bleak's scanner and client, backed by a :class:`Fleet`.

For fast unit tests of the gateway's BLE layer: no D-Bus, no daemon. It returns bleak's own
objects (``BLEDevice``, ``AdvertisementData``, ``BleakGATTServiceCollection``) and fails with the
exceptions bleak 3.1's BlueZ backend raises for the same BlueZ reply, because every simulated
failure is turned into the D-Bus error reply BlueZ would send and handed to bleak's own reply
checks (``assert_reply`` / ``assert_gatt_reply``). So, as with real bleak:

* ATT errors (``Operation failed with ATT error: 0x80``), ``NotAuthorized``, ``NotSupported``
  and ``ImproperlyConfigured`` on GATT operations raise ``BleakGATTProtocolError``;
  other BlueZ errors raise ``BleakDBusError(name, body)``;
* a device that is gone or was never seen raises ``BleakDeviceNotFoundError``;
* ``InProgress`` on a read or write is retried (bleak polls every 10 ms);
* a connect failing ``le-connection-abort-by-local`` is retried until the timeout
  (then ``TimeoutError``).

Durations (scan time, connect timeout, retry pauses) run on the fleet's clock, so with a
``ManualClock(autojump=True)`` a test never waits in real time.

Use::

    sim = SimBleak(fleet)
    async with sim.Scanner(service_uuids=[HR]) as scanner: ...
    devices = await sim.Scanner.discover(timeout=2, return_adv=True)
    async with sim.Client(ble_device, disconnected_callback=cb) as client: ...

``sim.Scanner`` / ``sim.Client`` are classes bound to the fleet, shaped like ``BleakScanner`` /
``BleakClient`` (constructor and classmethods), so the gateway can take them as factories.
:func:`inprocess_frontend` is the same pair as an async context manager, for test fixtures that
run one suite against several front ends.
"""

# bleak's own signatures take ``timeout`` arguments; the double keeps them.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, ClassVar, Literal, NoReturn, Protocol, TypeVar

from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakCharacteristicNotFoundError, BleakDeviceNotFoundError, BleakError
from bleak.uuids import normalize_uuid_str

from firmware_sim.devices.base import ABORT_BY_LOCAL, SimDevice
from firmware_sim.fleet import Fleet
from firmware_sim.model.contract import SimError, SimErrorCode

__all__ = [
    "ClientFactory",
    "Frontend",
    "ScannerFactory",
    "SimBleak",
    "SimBleakClient",
    "SimBleakScanner",
    "inprocess_frontend",
]

ADAPTER_PATH = "/org/bluez/hci0"
_INPROGRESS_RETRY_S = 0.01
_CONNECT_RETRY_S = 0.1

T = TypeVar("T")

DetectionCallback = Callable[[BLEDevice, AdvertisementData], Awaitable[None] | None]
NotifyCallback = Callable[[BleakGATTCharacteristic, bytearray], Awaitable[None] | None]

_background: set[asyncio.Task[Any]] = set()


def _spawn(coro: Coroutine[Any, Any, Any]) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


def _plain_callback(callback: Callable[..., Any], *first: Any) -> Callable[..., None]:
    """``callback`` with ``first`` bound as its leading arguments; as in bleak, a coroutine
    function is run as a task of its own rather than awaited by the caller."""
    if inspect.iscoroutinefunction(callback):

        def spawned(*args: Any) -> None:
            _spawn(callback(*first, *args))

        return spawned
    return functools.partial(callback, *first)


def device_path(address: str) -> str:
    """The BlueZ object path of a device address."""
    return f"{ADAPTER_PATH}/dev_{address.upper().replace(':', '_')}"


def raise_as_bleak(err: SimError, *, gatt: bool = False, start_notify: bool = False) -> NoReturn:
    """Raise what bleak's BlueZ backend raises when BlueZ answers with ``err``'s D-Bus error.

    Builds the D-Bus error reply and passes it through bleak's own reply checks, so the
    exception types stay those of the installed bleak."""
    from bleak.backends.bluezdbus.utils import assert_gatt_reply, assert_reply
    from dbus_fast import Message, MessageType

    body = err.dbus_error_body
    reply = Message(
        message_type=MessageType.ERROR,
        error_name=err.dbus_error_name,
        reply_serial=1,
        signature="s" if body else "",
        body=body,
    )
    if gatt:
        assert_gatt_reply(reply, start_notify=start_notify)
    else:
        assert_reply(reply)
    raise BleakError(str(err))  # unreachable: the checks above raise for any error reply


async def _clock_timeout(sim: SimBleak, coro: Coroutine[Any, Any, T], seconds: float) -> T:
    """Run ``coro``; TimeoutError if the fleet's clock passes ``seconds`` first."""
    work = asyncio.ensure_future(coro)
    timer = asyncio.ensure_future(sim.fleet.clock.sleep(seconds))
    try:
        done, _ = await asyncio.wait({work, timer}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        work.cancel()  # our caller was cancelled: take the work down with it
        raise
    finally:
        timer.cancel()
    if work in done:
        return work.result()
    work.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await work
    raise TimeoutError


def _props(dev: SimDevice) -> dict[str, Any]:
    adv = dev.advertisement()
    return {
        "Address": dev.address,
        "AddressType": dev.address_type,
        "Alias": dev.name,
        "Name": dev.name,
        "Adapter": ADAPTER_PATH,
        "Connected": dev.connected,
        "Paired": dev.paired,
        "Trusted": dev.paired,
        "UUIDs": list(adv.service_uuids),
        "RSSI": adv.rssi,
        "ManufacturerData": dict(adv.manufacturer_data),
        "ServiceData": dict(adv.service_data),
    }


def ble_device_of(dev: SimDevice) -> BLEDevice:
    """bleak's ``BLEDevice`` for a simulated device (details like the BlueZ backend's)."""
    return BLEDevice(
        dev.address, dev.name, {"path": device_path(dev.address), "props": _props(dev)}
    )


def advertisement_of(dev: SimDevice) -> AdvertisementData:
    """bleak's ``AdvertisementData`` for what the device advertises now."""
    adv = dev.advertisement()
    return AdvertisementData(
        local_name=adv.name,
        manufacturer_data=dict(adv.manufacturer_data),
        service_data=dict(adv.service_data),
        service_uuids=list(adv.service_uuids),
        tx_power=adv.tx_power,
        rssi=adv.rssi,
        platform_data=(device_path(dev.address), _props(dev)),
    )


class _Observer:
    """A PeripheralEvents sink that forwards to callables (scheduled, never re-entrant)."""

    def __init__(
        self,
        *,
        notify: Callable[[int, bytes], None] | None = None,
        disconnected: Callable[[str], None] | None = None,
        advertisement: Callable[[], None] | None = None,
    ) -> None:
        self._notify = notify
        self._disconnected = disconnected
        self._advertisement = advertisement

    def notify(self, handle: int, value: bytes) -> None:
        if self._notify is not None:
            asyncio.get_running_loop().call_soon(self._notify, handle, bytes(value))

    def disconnected(self, reason: str) -> None:
        if self._disconnected is not None:
            asyncio.get_running_loop().call_soon(self._disconnected, reason)

    def advertisement_changed(self) -> None:
        if self._advertisement is not None:
            asyncio.get_running_loop().call_soon(self._advertisement)


# ----------------------------------------------------------------------------- scanner


class SimBleakScanner:
    """Shaped like ``bleak.BleakScanner``; use the fleet-bound ``SimBleak(f).Scanner``."""

    _sim: ClassVar[SimBleak | None] = None

    def __init__(
        self,
        detection_callback: DetectionCallback | None = None,
        service_uuids: list[str] | None = None,
        scanning_mode: Literal["active", "passive"] = "active",
        *,
        bluez: dict[str, Any] | None = None,
        sim: SimBleak | None = None,
        **kwargs: Any,
    ) -> None:
        bound = sim or type(self)._sim
        if bound is None:
            raise BleakError("SimBleakScanner is not bound to a fleet; use SimBleak(fleet).Scanner")
        self._bound = bound
        bluez = bluez or {}
        # the same checks as bleak's BlueZ scanner
        if scanning_mode == "passive" and service_uuids:
            raise BleakError(
                "service uuid filtering is not implemented for passive scanning, "
                "use bluez or_patterns as a workaround"
            )
        if scanning_mode == "passive" and not bluez.get("or_patterns"):
            raise BleakError("passive scanning mode requires bluez or_patterns")
        self._service_uuids = (
            [normalize_uuid_str(u) for u in service_uuids] if service_uuids else None
        )
        self._callbacks: dict[object, Callable[[BLEDevice, AdvertisementData], None]] = {}
        if detection_callback is not None:
            self._register(detection_callback)
        self.seen_devices: dict[str, tuple[BLEDevice, AdvertisementData]] = {}
        self._unsubscribe: list[Callable[[], None]] = []
        self._scanning = False

    # bleak API ------------------------------------------------------------

    async def __aenter__(self) -> SimBleakScanner:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start scanning: every visible device is reported now and on each advertisement."""
        if self._scanning:
            raise BleakError("Scanner is already running")  # mirrors BlueZ's InProgress
        self._scanning = True
        self.seen_devices = {}
        fleet = self._bound.fleet
        for dev in fleet.devices:
            self._watch(dev)
        fleet.on_added.append(self._on_added)
        self._unsubscribe.append(lambda: _discard(fleet.on_added, self._on_added))
        loop = asyncio.get_running_loop()
        for dev in list(fleet.devices):
            loop.call_soon(self._advertised, dev)

    async def stop(self) -> None:
        """Stop scanning."""
        self._scanning = False
        for undo in self._unsubscribe:
            undo()
        self._unsubscribe.clear()

    @property
    def discovered_devices(self) -> list[BLEDevice]:
        return [d for d, _ in self.seen_devices.values()]

    @property
    def discovered_devices_and_advertisement_data(
        self,
    ) -> dict[str, tuple[BLEDevice, AdvertisementData]]:
        return {d.address: (d, a) for d, a in self.seen_devices.values()}

    async def advertisement_data(self) -> AsyncGenerator[tuple[BLEDevice, AdvertisementData]]:
        """Yield (device, advertisement) as they arrive; the scanner must be started."""
        queue: asyncio.Queue[tuple[BLEDevice, AdvertisementData]] = asyncio.Queue()
        remove = self._register(lambda d, a: queue.put_nowait((d, a)))
        try:
            while True:
                yield await queue.get()
        finally:
            remove()

    @classmethod
    async def discover(
        cls,
        timeout: float = 5.0,
        *,
        return_adv: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Scan for ``timeout`` seconds (fleet clock); devices, or a dict address -> (device,
        advertisement) with ``return_adv=True``."""
        async with cls(**kwargs) as scanner:
            await scanner._bound.fleet.clock.sleep(timeout)
        if return_adv:
            return scanner.discovered_devices_and_advertisement_data
        return scanner.discovered_devices

    @classmethod
    async def find_device_by_filter(
        cls,
        filterfunc: Callable[[BLEDevice, AdvertisementData], bool],
        timeout: float = 10.0,
        **kwargs: Any,
    ) -> BLEDevice | None:
        """The first device for which ``filterfunc`` is true within ``timeout``, else None."""
        async with cls(**kwargs) as scanner:

            async def first() -> BLEDevice:
                async for bd, ad in scanner.advertisement_data():
                    if filterfunc(bd, ad):
                        return bd
                raise AssertionError("unreachable")

            try:
                return await _clock_timeout(scanner._bound, first(), timeout)
            except TimeoutError:
                return None

    @classmethod
    async def find_device_by_address(
        cls,
        device_identifier: str,
        timeout: float = 10.0,
        **kwargs: Any,
    ) -> BLEDevice | None:
        wanted = device_identifier.lower()
        return await cls.find_device_by_filter(
            lambda d, _: d.address.lower() == wanted, timeout=timeout, **kwargs
        )

    @classmethod
    async def find_device_by_name(
        cls,
        name: str,
        timeout: float = 10.0,
        **kwargs: Any,
    ) -> BLEDevice | None:
        return await cls.find_device_by_filter(
            lambda _, a: a.local_name == name, timeout=timeout, **kwargs
        )

    # internals ------------------------------------------------------------

    def _register(self, callback: DetectionCallback) -> Callable[[], None]:
        token = object()
        self._callbacks[token] = _plain_callback(callback)
        return lambda: self._callbacks.pop(token, None) and None

    def _on_added(self, dev: SimDevice) -> None:
        self._watch(dev)
        asyncio.get_running_loop().call_soon(self._advertised, dev)

    def _watch(self, dev: SimDevice) -> None:
        remove = dev.add_events(_Observer(advertisement=functools.partial(self._advertised, dev)))
        self._unsubscribe.append(remove)

    def _advertised(self, dev: SimDevice) -> None:
        if not self._scanning or not dev.visible or dev not in self._bound.fleet.devices:
            return
        adv = advertisement_of(dev)
        if self._service_uuids is not None and not set(self._service_uuids) & set(
            adv.service_uuids
        ):
            return
        bd = ble_device_of(dev)
        self.seen_devices[device_path(dev.address)] = (bd, adv)
        for cb in list(self._callbacks.values()):
            cb(bd, adv)


def _discard(items: list[Any], item: Any) -> None:
    if item in items:
        items.remove(item)


# ----------------------------------------------------------------------------- client


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
                raise _not_found(self.address)
            self._known = True
        device = fleet.find(self.address)
        if device is None:
            raise _not_found(self.address, removed=True)
        await _clock_timeout(self._bound, self._connect_loop(device), timeout)
        self._device = device
        self._connected = True
        self._callbacks = {}
        self._remove_observer = device.add_events(
            _Observer(notify=self._on_notify, disconnected=self._on_dropped)
        )
        self._services = _collection(device)

    async def _connect_loop(self, device: SimDevice) -> None:
        while True:
            try:
                if self._pair_before_connect and not device.paired:
                    await device.pair()
                else:
                    await device.connect()
                return
            except SimError as e:
                if e.code is SimErrorCode.FAILED and e.message == ABORT_BY_LOCAL:
                    await self._bound.fleet.clock.sleep(_CONNECT_RETRY_S)
                    continue
                if e.code is SimErrorCode.UNKNOWN_OBJECT:
                    raise _not_found(self.address, removed=True) from e
                raise_as_bleak(e)

    async def disconnect(self) -> None:
        """Disconnect; the disconnected callback runs as with bleak."""
        if not self._connected or self._device is None:
            return
        try:
            await self._device.disconnect()
        except SimError as e:
            self._teardown(notify=True)
            raise_as_bleak(e)
        self._teardown(notify=True)

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        """Pair (bond) with the device; no-op if already paired."""
        device = self._device or self._bound.fleet.find(self.address)
        if device is None:
            raise _not_found(self.address)
        if device.paired:
            return
        try:
            await device.pair()
        except SimError as e:
            raise_as_bleak(e)

    async def unpair(self) -> None:
        """Remove the bond (and the link)."""
        device = self._device or self._bound.fleet.find(self.address)
        self._teardown(notify=False)
        self._known = False
        if device is None:
            raise _not_found(self.address)
        try:
            await device.unpair()
        except SimError as e:
            if e.code is SimErrorCode.DOES_NOT_EXIST:
                raise _not_found(self.address) from e
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
            except SimError as e:
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
        self._callbacks[ch.handle] = _plain_callback(callback, ch)
        try:
            await self._live().start_notify(ch.handle)
        except SimError as e:
            raise_as_bleak(e, gatt=True, start_notify=True)

    async def stop_notify(
        self, char_specifier: BleakGATTCharacteristic | int | str | uuid.UUID
    ) -> None:
        ch = self._resolve(char_specifier)
        device = self._live()
        try:
            await device.stop_notify(ch.handle)
        except SimError as e:
            raise_as_bleak(e)
        self._callbacks.pop(ch.handle, None)

    async def read_gatt_descriptor(
        self, desc_specifier: BleakGATTDescriptor | int, *, use_cached: bool = False, **kw: Any
    ) -> bytearray:
        desc = self._resolve_descriptor(desc_specifier)
        device = self._live()
        try:
            return bytearray(await device.read_descriptor(desc.handle))
        except SimError as e:
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
        except SimError as e:
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


def _not_found(address: str, *, removed: bool = False) -> BleakDeviceNotFoundError:
    """bleak's error for an address BlueZ does not know; ``removed`` adds bleak's guess for a
    device that was seen before."""
    message = f"Device with address {address} was not found."
    if removed:
        message += " It may have been removed from BlueZ when scanning stopped."
    return BleakDeviceNotFoundError(address, message)


def _collection(device: SimDevice) -> BleakGATTServiceCollection:
    coll = BleakGATTServiceCollection()
    path = device_path(device.address)
    for svc in device.services():
        spath = f"{path}/service{svc.handle:04x}"
        service = BleakGATTService((spath, {"UUID": svc.uuid}), svc.handle, svc.uuid)
        coll.add_service(service)
        for c in svc.characteristics:
            cpath = f"{spath}/char{c.handle:04x}"
            props: dict[str, Any] = {"UUID": c.uuid, "Flags": sorted(c.flags), "Service": spath}
            ch = BleakGATTCharacteristic(
                (cpath, props),
                c.handle,
                c.uuid,
                sorted(c.flags),  # type: ignore[arg-type]
                lambda: 20,
                service,
            )
            coll.add_characteristic(ch)
            for d in c.descriptors:
                dpath = f"{cpath}/desc{d.handle:04x}"
                coll.add_descriptor(
                    BleakGATTDescriptor((dpath, {"UUID": d.uuid}), d.handle, d.uuid, ch)
                )
    return coll


# ----------------------------------------------------------------------------- binding


class SimBleak:
    """The in-process double for one fleet: ``Scanner`` and ``Client`` classes bound to it."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.Scanner: type[SimBleakScanner] = type(
            "SimBleakScanner", (SimBleakScanner,), {"_sim": self}
        )
        self.Client: type[SimBleakClient] = type(
            "SimBleakClient", (SimBleakClient,), {"_sim": self}
        )

    def scanner(self, *args: Any, **kwargs: Any) -> SimBleakScanner:
        """A scanner (same arguments as ``BleakScanner``)."""
        return self.Scanner(*args, **kwargs)

    def client(self, *args: Any, **kwargs: Any) -> SimBleakClient:
        """A client (same arguments as ``BleakClient``)."""
        return self.Client(*args, **kwargs)


ScannerFactory = Any
"""``BleakScanner`` or ``SimBleak(f).Scanner``: callable like the constructor, with the
``discover`` / ``find_device_by_address`` classmethods."""
ClientFactory = Any
"""``BleakClient`` or ``SimBleak(f).Client``."""


class Frontend(Protocol):
    """A way of serving a fleet to bleak-shaped code: ``async with frontend(fleet) as
    (scanner_factory, client_factory): ...``. The in-process double is one; the fake BlueZ
    (real ``BleakScanner`` / ``BleakClient`` on a private bus) is the other."""

    def __call__(
        self, fleet: Fleet
    ) -> contextlib.AbstractAsyncContextManager[tuple[ScannerFactory, ClientFactory]]: ...


@contextlib.asynccontextmanager
async def inprocess_frontend(fleet: Fleet) -> AsyncIterator[tuple[ScannerFactory, ClientFactory]]:
    """The in-process front end. Starts the fleet if it is not running (and then stops it)."""
    started = not fleet.running
    if started:
        await fleet.start()
    sim = SimBleak(fleet)
    try:
        yield sim.Scanner, sim.Client
    finally:
        if started:
            await fleet.stop()
