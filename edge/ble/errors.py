"""Translate bleak's exceptions into edge's, at the boundary, without leaking addresses.

bleak's messages often contain the device address or a BlueZ object path, so the translated
message carries only the operation, the exception type and (for D-Bus errors) the error name.
"""

from __future__ import annotations

import asyncio

from bleak.exc import (
    BleakBluetoothNotAvailableError,
    BleakDBusError,
    BleakDeviceNotFoundError,
    BleakError,
    BleakGATTProtocolError,
)

from edge.errors import BleError

#: D-Bus error names that mean "the device refused to bond / the link is not authorised"
AUTH_ERRORS = frozenset(
    {
        "org.bluez.Error.AuthenticationFailed",
        "org.bluez.Error.AuthenticationRejected",
        "org.bluez.Error.AuthenticationCanceled",
        "org.bluez.Error.AuthenticationTimeout",
        "org.bluez.Error.NotAuthorized",
        "org.bluez.Error.NotPermitted",
        "org.bluez.Error.ConnectionAttemptFailed",
    }
)

#: bluetoothd's Connect failure when the device no longer has the bond's key (HCI "PIN or Key
#: Missing" on encryption): a device that was reset or had its battery changed
KEY_MISSING = "le-connection-key-missing"
#: D-Bus errors on connect, encryption or an encrypted read that mean "the bond no longer works"
BOND_LOST_ERRORS = frozenset(
    {
        "org.bluez.Error.AuthenticationFailed",
        "org.bluez.Error.NotPermitted",
        "org.bluez.Error.NotAuthorized",
    }
)
#: ATT errors meaning the same: insufficient authentication, insufficient encryption
BOND_LOST_ATT = frozenset({0x05, 0x0F})
#: the address-free reasons (:func:`reason_of`) that mean "the bond no longer works"
BOND_LOST_REASONS = frozenset(
    {"key_missing", *("dbus:" + e.rsplit(".", 1)[-1] for e in BOND_LOST_ERRORS),
     *(f"att:0x{c:02x}" for c in BOND_LOST_ATT)}
)

#: what the translation catches: bleak's own errors, D-Bus timeouts and OS-level failures
BLE_EXCEPTIONS: tuple[type[BaseException], ...] = (BleakError, TimeoutError, OSError, EOFError)


def reason_of(exc: BaseException) -> str:
    """A short, address-free word for an error: ``dbus:InProgress``, ``att:0x80``, ``timeout``."""
    if isinstance(exc, BleakDBusError):
        if exc.dbus_error == "org.bluez.Error.Failed" and KEY_MISSING in (
                exc.dbus_error_details or ""):
            return "key_missing"
        return "dbus:" + exc.dbus_error.rsplit(".", 1)[-1]
    if isinstance(exc, BleakGATTProtocolError):
        return f"att:0x{int(exc.code):02x}"
    if isinstance(exc, BleakDeviceNotFoundError):
        return "not_found"
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, BleOperationError):
        return exc.reason
    # bleak's plain BleakError says what happened only in its text (which may carry the
    # address): map the known phrases to fixed words, never pass the text on.
    text = str(exc).lower()
    for phrase, word in (("not found", "not_found"), ("not connected", "not_connected"),
                         ("already connected", "already_connected"),
                         ("services resolved", "services_unresolved")):
        if phrase in text:
            return word
    return type(exc).__name__


def att_code(exc: BaseException) -> int | None:
    """The ATT error code carried by ``exc`` (bleak maps BlueZ's "ATT error: 0xNN"), if any."""
    if isinstance(exc, BleakGATTProtocolError):
        return int(exc.code)
    if isinstance(exc, BleakDBusError):
        details = exc.dbus_error_details or ""
        marker = "ATT error: 0x"
        if marker in details:
            try:
                return int(details.split(marker, 1)[1][:2], 16)
            except ValueError:
                return None
    return None


def is_auth_error(exc: BaseException) -> bool:
    """Whether ``exc`` says the device refused to bond or needs an encrypted link."""
    if isinstance(exc, BleakDBusError):
        return exc.dbus_error in AUTH_ERRORS
    if isinstance(exc, BleakGATTProtocolError):
        # 0x05 insufficient authentication, 0x0F insufficient encryption
        return int(exc.code) in (0x05, 0x08, 0x0C, 0x0F)
    return False


def is_bond_lost(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was translated from) says the bond no longer works: the
    device forgot it (reset, battery change), so encryption with the old key fails. Retrying
    does not fix that; only a new pairing does. ``NotPermitted`` for a characteristic that is
    simply not readable or writable ("Read not permitted") is not one."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, BleOperationError) and cur.__cause__ is not None:
            cur = cur.__cause__  # the original says more (e.g. "Read not permitted")
            continue
        if isinstance(cur, BleakDBusError):
            details = (cur.dbus_error_details or "").lower()
            if "read not permitted" in details or "write not permitted" in details:
                return False
            if (cur.dbus_error in BOND_LOST_ERRORS or att_code(cur) in BOND_LOST_ATT
                    or reason_of(cur) == "key_missing"):
                return True
        if isinstance(cur, BleakGATTProtocolError | BleOperationError) and (
                reason_of(cur) in BOND_LOST_REASONS):
            return True
        cur = cur.__cause__
    return False


class BleOperationError(BleError):
    """A BLE operation failed; ``operation`` and ``reason`` are short address-free words."""

    def __init__(self, operation: str, reason: str) -> None:
        super().__init__(f"{operation} failed ({reason})")
        self.operation = operation
        self.reason = reason


def stack_error(operation: str, exc: BaseException) -> BleOperationError:
    """Like :func:`ble_error`, with the operator's next step when BlueZ itself is out of
    reach (no system bus, no bluetoothd, no permission, adapter off)."""
    err = ble_error(operation, exc)
    hint = None
    if isinstance(exc, BleakBluetoothNotAvailableError):
        hint = "Bluetooth is not available — is the adapter present and powered on?"
    elif isinstance(exc, OSError | EOFError) or (
        isinstance(exc, BleakDBusError) and exc.dbus_error.startswith("org.freedesktop.DBus.")
    ):
        hint = ("cannot reach BlueZ on the system D-Bus — is bluetoothd running, and is this "
                "user allowed to use it (the bluetooth group)?")
    if hint:
        err.args = (f"{err.args[0]}: {hint}",)
    return err


def ble_error(operation: str, exc: BaseException) -> BleOperationError:
    """A :class:`BleError` naming ``operation`` and the reason; use with ``raise … from exc``."""
    return BleOperationError(operation, reason_of(exc))
