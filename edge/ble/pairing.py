"""``edge pair`` / ``edge unpair``: bond with a device, check it, bind it to a patient.

The BLE part (:func:`pair_device`, :func:`unpair_device`) is separate from the vault part so
each can be tested alone; :func:`bind` / :func:`unbind` do both.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from bleak.backends.device import BLEDevice

from edge.ble.errors import BLE_EXCEPTIONS, ble_error, is_auth_error, stack_error
from edge.ble.ports import BleClient, ClientFactory, ScannerFactory
from edge.ble.profiles import (
    DEVICE_INFORMATION,
    KIND_SERVICES,
    KINDS,
    kind_from_services,
    normalize_address,
)
from edge.ble.scanner import scan_for
from edge.clock import Clock
from edge.errors import BleError, PairingRefused
from edge.log import get_logger

log = get_logger("edge.ble.pairing")


@dataclass(frozen=True)
class PairedDevice:
    """What pairing learned about a device."""

    #: identity address (after bonding a resolvable private address resolves to it)
    address: str
    kind: str
    device_info: dict[str, str] = field(default_factory=dict)
    service_uuids: tuple[str, ...] = ()


def service_uuids(client: BleClient) -> tuple[str, ...]:
    """The resolved primary services' UUIDs (lower case)."""
    try:
        return tuple(str(s.uuid).lower() for s in client.services)
    except BLE_EXCEPTIONS:
        return ()


async def read_device_information(client: BleClient) -> dict[str, str]:
    """Manufacturer, model, serial and firmware strings that the device offers."""
    info: dict[str, str] = {}
    for name, uuid in DEVICE_INFORMATION.items():
        try:
            if client.services.get_characteristic(uuid) is None:
                continue
            raw = await client.read_gatt_char(uuid)
        except BLE_EXCEPTIONS:
            continue
        info[name] = bytes(raw).split(b"\0", 1)[0].decode("utf-8", "replace").strip()
    return info


async def _find(scanner_factory: ScannerFactory | None, clock: Clock, address: str,
                seconds: float) -> BLEDevice | str:
    """The scanner's ``BLEDevice`` for ``address``, or the address itself when not seen."""
    if scanner_factory is None:
        return address
    found = await scan_for(scanner_factory, clock, address, seconds)
    if found is None:
        raise BleError("device not found nearby; is it advertising? (try `edge scan`)")
    return found


async def pair_device(
    client_factory: ClientFactory,
    address: str,
    *,
    kind: str | None = None,
    clock: Clock,
    scanner_factory: ScannerFactory | None = None,
    connect_timeout_s: float = 20.0,
) -> PairedDevice:
    """Connect, bond, read Device Information and check the expected service.

    Raises :class:`PairingRefused` when the device refuses to bond or lacks the service, and
    :class:`BleError` when it cannot be reached.
    """
    address = normalize_address(address)
    if kind is not None and kind not in KINDS:
        raise PairingRefused(f"unknown device kind {kind!r}; use one of {', '.join(KINDS)}")
    target = await _find(scanner_factory, clock, address, connect_timeout_s)
    client = client_factory(target, timeout=connect_timeout_s)
    try:
        await client.connect()
    except BLE_EXCEPTIONS as exc:
        raise stack_error("connect", exc) from exc
    try:
        try:
            await client.pair()
        except BLE_EXCEPTIONS as exc:
            if is_auth_error(exc):
                raise PairingRefused("the device refused to bond") from exc
            raise PairingRefused(f"bonding failed ({ble_error('pair', exc).reason})") from exc
        uuids = service_uuids(client)
        found_kind = kind_from_services(uuids)
        if kind is None:
            if found_kind == "other":
                raise PairingRefused(
                    "the device offers neither the Heart Rate nor the Glucose service"
                )
            kind = found_kind
        elif KIND_SERVICES[kind] not in uuids:
            label = "Heart Rate" if kind == "heart_rate" else "Glucose"
            raise PairingRefused(f"the device does not offer the {label} service")
        info = await read_device_information(client)
        try:
            identity = normalize_address(client.address)
        except ValueError:
            identity = address
        log.info("ble.paired", address=identity, kind=kind)
        return PairedDevice(identity, kind, info, uuids)
    except PairingRefused:
        # Leave no half-bonded device behind in BlueZ.
        with contextlib.suppress(*BLE_EXCEPTIONS):
            await client.unpair()
        raise
    finally:
        with contextlib.suppress(*BLE_EXCEPTIONS):
            await client.disconnect()


async def unpair_device(
    client_factory: ClientFactory, address: str, *, connect_timeout_s: float = 20.0
) -> bool:
    """Remove the bond in BlueZ (RemoveDevice). False when BlueZ did not know the device."""
    client = client_factory(normalize_address(address), timeout=connect_timeout_s)
    try:
        await client.unpair()
    except BLE_EXCEPTIONS as exc:
        log.info("ble.unpair_skipped", address=address, reason=ble_error("unpair", exc).reason)
        return False
    log.info("ble.unpaired", address=address)
    return True
