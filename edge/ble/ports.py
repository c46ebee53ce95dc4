"""What the BLE layer depends on, as Protocols, so every part is injected.

Production passes :func:`bleak_scanner_factory` / :func:`bleak_client_factory` (bleak's real
backend); unit tests pass the simulator's in-process double, which has bleak's API surface and
raises bleak's exceptions. The daemon provides the :class:`IntakeSink`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Protocol

from bleak import BleakClient, BleakScanner
from bleak.args.bluez import BlueZNotifyArgs
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

from edge.readings import GlucoseReading, HeartRateReading

#: ``callback(device, advertisement)`` for every advertisement seen while scanning
DetectionCallback = Callable[[BLEDevice, AdvertisementData], None]
#: ``callback(characteristic, value)`` for every notification or indication
NotifyCallback = Callable[[BleakGATTCharacteristic, bytearray], None]
#: called when the link drops; the argument (the client) is not used
DisconnectedCallback = Callable[[object], None]


class Scanner(Protocol):
    """The part of :class:`bleak.BleakScanner` the gateway uses."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class ScannerFactory(Protocol):
    """Makes a scanner that reports every advertisement to ``detection_callback``."""

    def __call__(self, detection_callback: DetectionCallback, /) -> Scanner: ...


class GattService(Protocol):
    """The part of bleak's ``BleakGATTService`` the gateway uses."""

    @property
    def uuid(self) -> str: ...


class GattServices(Protocol):
    """The part of bleak's ``BleakGATTServiceCollection`` the gateway uses."""

    def __iter__(self) -> Iterator[GattService]: ...

    def get_characteristic(self, specifier: str, /) -> BleakGATTCharacteristic | None: ...


class BleClient(Protocol):
    """The part of :class:`bleak.BleakClient` the gateway uses."""

    @property
    def address(self) -> str: ...

    @property
    def is_connected(self) -> bool: ...

    @property
    def services(self) -> GattServices: ...

    async def connect(self) -> None: ...

    async def disconnect(self) -> None: ...

    async def pair(self) -> None: ...

    async def unpair(self) -> None: ...

    async def read_gatt_char(self, char_specifier: str, /) -> bytearray: ...

    async def write_gatt_char(
        self, char_specifier: str, data: bytes, response: bool | None = None, /
    ) -> None: ...

    async def start_notify(
        self, char_specifier: str, callback: NotifyCallback, /, *, bluez: BlueZNotifyArgs = ...
    ) -> None: ...

    async def stop_notify(self, char_specifier: str, /) -> None: ...


class ClientFactory(Protocol):
    """Makes a client for a device seen by a scanner (or, failing that, an address)."""

    def __call__(
        self,
        device: BLEDevice | str,
        /,
        *,
        disconnected_callback: DisconnectedCallback | None = None,
        timeout: float = 20.0,
    ) -> BleClient: ...


class IntakeSink(Protocol):
    """Where sessions hand readings; implemented by the intake gate (``edge.intake``)."""

    async def submit(self, readings: Sequence[HeartRateReading | GlucoseReading]) -> None:
        """Validate, apply the consent gate, append. Never raises for refusals (counts them)."""

    async def submit_glucose(
        self,
        address: str,
        readings: Sequence[GlucoseReading],
        *,
        last_sequence: int,
        last_device_time: datetime | None,
        clock_offset_s: int,
    ) -> None:
        """Glucose records and the meter's sync cursor, committed in one transaction."""

    async def refuse(self, reason: str, n: int = 1) -> None:
        """Count ``n`` refusals with ``reason`` (e.g. ``malformed``) without storing anything."""


class BindingLike(Protocol):
    """One allow-list entry (``edge.vault`` ``Binding``)."""

    @property
    def address(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def patient(self) -> str: ...

    @property
    def bonded(self) -> bool: ...

    @property
    def last_seen(self) -> datetime | None: ...


class CursorLike(Protocol):
    """A glucose meter's sync cursor (``edge.vault`` ``GlucoseCursor``)."""

    @property
    def last_sequence(self) -> int: ...

    @property
    def last_device_time(self) -> datetime | None: ...

    @property
    def clock_offset_s(self) -> int: ...


class DeviceRegistry(Protocol):
    """The vault calls the BLE manager makes (the allow-list and the sync cursors)."""

    async def bindings(self) -> Sequence[BindingLike]: ...

    async def cursor(self, address: str) -> CursorLike | None: ...

    async def touch_device(self, address: str, seen_at: datetime) -> None: ...


def bleak_scanner_factory(adapter: str | None = None) -> ScannerFactory:
    """Scanners on bleak's real backend (active scanning on ``adapter``)."""

    def make(detection_callback: DetectionCallback, /) -> Scanner:
        if adapter:
            return BleakScanner(detection_callback, bluez={"adapter": adapter})
        return BleakScanner(detection_callback)

    return make


def bleak_client_factory(adapter: str | None = None) -> ClientFactory:
    """Clients on bleak's real backend."""

    def make(
        device: BLEDevice | str,
        /,
        *,
        disconnected_callback: DisconnectedCallback | None = None,
        timeout: float = 20.0,
    ) -> BleClient:
        if adapter:
            return BleakClient(
                device,
                disconnected_callback=disconnected_callback,
                timeout=timeout,
                bluez={"adapter": adapter},
            )
        return BleakClient(device, disconnected_callback=disconnected_callback, timeout=timeout)

    return make


class AdapterSnapshot(Protocol):
    """What BlueZ says about its adapters (``edge.ble.adapters.Snapshot``)."""

    @property
    def present(self) -> frozenset[str]:
        """The adapters (hciN) BlueZ has now."""

    def bonded_on(self, address: str) -> frozenset[str]:
        """The adapters BlueZ holds a bond with ``address`` on."""


class AdapterControl(Protocol):
    """BlueZ's adapters over D-Bus (bleak has no API for them): which are present, changes
    (``InterfacesAdded`` / ``InterfacesRemoved``), and power-cycling one. Production passes
    :class:`edge.ble.adapters.BluezAdapters`; tests a fake."""

    async def start(self) -> None:
        """Connect and follow adapter changes (raises ``BleError`` when BlueZ is out of reach)."""

    async def snapshot(self) -> AdapterSnapshot: ...

    async def wait_changed(self) -> None:
        """Return after an adapter came or went (since the last return); raise ``BleError``
        when the bus is lost."""

    async def power_cycle(self, adapter: str) -> None:
        """``Adapter1.Powered`` false, then true."""

    async def close(self) -> None: ...
