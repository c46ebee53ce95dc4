"""The contract between simulated devices and the transports that serve them.

A :class:`Peripheral` knows nothing about D-Bus or bleak. A transport (the in-process bleak
double, or the fake BlueZ on a private D-Bus) calls the peripheral's operations and installs a
:class:`PeripheralEvents` sink to learn about notifications, link drops and advertisement
changes. Failures are :class:`PeripheralError` with a BlueZ-style ``code``; each transport maps
the code to what its clients expect (a D-Bus error name, or a bleak exception).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from firmware_sim.errors import SimError

if TYPE_CHECKING:
    from firmware_sim.model.pairing import PairingChallenge


def uuid16(short: int) -> str:
    """The 128-bit UUID string of a Bluetooth SIG 16-bit UUID."""
    return f"0000{short:04x}-0000-1000-8000-00805f9b34fb"


class Security(StrEnum):
    """What a characteristic requires of the link before it may be read or written."""

    NONE = "none"
    #: encrypted link: the device must be paired/bonded first
    ENCRYPTED = "encrypted"


class SimErrorCode(StrEnum):
    """Failures a transport must be able to express; values are the BlueZ D-Bus error names
    (``org.bluez.Error.<value>``), except ATT_* which BlueZ reports as ``Failed`` with text
    ``Operation failed with ATT error: 0xNN`` and UNKNOWN_OBJECT (a vanished device)."""

    FAILED = "Failed"
    IN_PROGRESS = "InProgress"
    NOT_PERMITTED = "NotPermitted"
    NOT_AUTHORIZED = "NotAuthorized"
    NOT_SUPPORTED = "NotSupported"
    INVALID_ARGUMENTS = "InvalidArguments"
    IMPROPERLY_CONFIGURED = "ImproperlyConfigured"
    AUTHENTICATION_FAILED = "AuthenticationFailed"
    AUTHENTICATION_REJECTED = "AuthenticationRejected"
    AUTHENTICATION_CANCELED = "AuthenticationCanceled"
    AUTHENTICATION_TIMEOUT = "AuthenticationTimeout"
    ALREADY_EXISTS = "AlreadyExists"
    DOES_NOT_EXIST = "DoesNotExist"
    ATT_ERROR = "AttError"
    UNKNOWN_OBJECT = "UnknownObject"


class PeripheralError(SimError):
    """A peripheral operation failed. ``message`` is the human text BlueZ would carry, e.g.
    ``le-connection-abort-by-local``; ``att_code`` is set for ATT_ERROR (0x80, 0x81 …)."""

    def __init__(self, code: SimErrorCode, message: str = "", att_code: int | None = None) -> None:
        text = message or (f"Operation failed with ATT error: 0x{att_code:02x}" if att_code else "")
        super().__init__(f"{code.value}: {text}" if text else code.value)
        self.code = code
        self.message = text
        self.att_code = att_code

    @property
    def dbus_error_name(self) -> str:
        """The D-Bus error name BlueZ would reply with."""
        if self.code is SimErrorCode.UNKNOWN_OBJECT:
            return "org.freedesktop.DBus.Error.UnknownObject"
        if self.code is SimErrorCode.ATT_ERROR:
            return "org.bluez.Error.Failed"
        return f"org.bluez.Error.{self.code.value}"

    @property
    def dbus_error_body(self) -> list[str]:
        """The D-Bus error body (one text argument, or none)."""
        return [self.message] if self.message else []


@dataclass(frozen=True)
class DescriptorSpec:
    uuid: str
    handle: int


@dataclass(frozen=True)
class CharacteristicSpec:
    """A characteristic as a client sees it. ``flags`` uses BlueZ's words: ``read``, ``write``,
    ``write-without-response``, ``notify``, ``indicate``."""

    uuid: str
    handle: int
    flags: frozenset[str]
    security: Security = Security.NONE
    descriptors: tuple[DescriptorSpec, ...] = ()


@dataclass(frozen=True)
class ServiceSpec:
    uuid: str
    handle: int
    characteristics: tuple[CharacteristicSpec, ...]
    primary: bool = True


@dataclass(frozen=True)
class Advertisement:
    """What a scanner sees now. ``rssi`` varies between calls."""

    name: str
    service_uuids: tuple[str, ...]
    rssi: int
    manufacturer_data: dict[int, bytes] = field(default_factory=dict)
    service_data: dict[str, bytes] = field(default_factory=dict)
    tx_power: int | None = None


class PeripheralEvents(Protocol):
    """Installed by a transport; the peripheral calls these (from the event loop)."""

    def notify(self, handle: int, value: bytes) -> None:
        """A notification or indication of characteristic ``handle`` carrying ``value``."""

    def disconnected(self, reason: str) -> None:
        """The peripheral dropped the link (fault plan, reset …)."""

    def advertisement_changed(self) -> None:
        """Advertisement data (RSSI, visibility …) changed; re-read ``advertisement()``."""


class Peripheral(Protocol):
    """A simulated BLE peripheral. Every operation may raise :class:`PeripheralError`.

    Operations are coroutines because a fault plan may make them slow; they are driven by the
    simulator's injected clock, so tests can run them without real waiting.
    """

    address: str
    #: ``public`` | ``random``
    address_type: str
    name: str

    @property
    def connected(self) -> bool: ...

    @property
    def paired(self) -> bool: ...

    @property
    def visible(self) -> bool:
        """False while a fault plan makes the device disappear from scans."""

    def advertisement(self) -> Advertisement: ...

    def services(self) -> tuple[ServiceSpec, ...]: ...

    def set_events(self, events: PeripheralEvents | None) -> None: ...

    async def connect(self) -> None: ...

    async def disconnect(self) -> None: ...

    def pairing_challenge(self) -> PairingChallenge:
        """Start a pairing attempt: what the device demands and the code it shows."""

    def forget_bond(self) -> bool:
        """Lose the bond as a reset does (the host keeps its side); True if there was one."""

    async def pair(self, *, passkey: int | None = None, confirmed: bool = False) -> None:
        """Bond. ``passkey`` is what the host typed, ``confirmed`` whether it confirmed the
        code shown (see :mod:`firmware_sim.model.pairing`); a just-works device needs neither."""

    async def unpair(self) -> None: ...

    async def read(self, handle: int) -> bytes: ...

    async def write(self, handle: int, value: bytes, *, with_response: bool) -> None: ...

    async def start_notify(self, handle: int) -> None:
        """Enable notifications/indications (the CCCD write). RACP needs this before writes."""

    async def stop_notify(self, handle: int) -> None: ...

    async def read_descriptor(self, handle: int) -> bytes: ...

    async def write_descriptor(self, handle: int, value: bytes) -> None: ...
