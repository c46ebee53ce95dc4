"""Mapping of simulator failures to the D-Bus errors BlueZ sends."""

from __future__ import annotations

from dbus_fast import DBusError

from firmware_sim.model.contract import PeripheralError, SimErrorCode

BLUEZ_ERROR = "org.bluez.Error"
UNKNOWN_OBJECT = "org.freedesktop.DBus.Error.UnknownObject"

# The texts bluetoothd puts in its error replies (src/error.c), for a PeripheralError without.
_DEFAULT_TEXT: dict[SimErrorCode, str] = {
    SimErrorCode.FAILED: "Operation failed",
    SimErrorCode.IN_PROGRESS: "In Progress",
    SimErrorCode.NOT_PERMITTED: "Operation Not Permitted",
    SimErrorCode.NOT_AUTHORIZED: "Operation Not Authorized",
    SimErrorCode.NOT_SUPPORTED: "Operation is not supported",
    SimErrorCode.INVALID_ARGUMENTS: "Invalid arguments in method call",
    SimErrorCode.IMPROPERLY_CONFIGURED: "Improperly Configured",
    SimErrorCode.AUTHENTICATION_FAILED: "Authentication Failed",
    SimErrorCode.AUTHENTICATION_REJECTED: "Authentication Rejected",
    SimErrorCode.AUTHENTICATION_CANCELED: "Authentication Canceled",
    SimErrorCode.AUTHENTICATION_TIMEOUT: "Authentication Timeout",
    SimErrorCode.ALREADY_EXISTS: "Already Exists",
    SimErrorCode.DOES_NOT_EXIST: "Does Not Exist",
    SimErrorCode.UNKNOWN_OBJECT: "Unknown object",
}


def bluez_error(code: str, text: str) -> DBusError:
    """``org.bluez.Error.<code>`` carrying ``text``."""
    return DBusError(f"{BLUEZ_ERROR}.{code}", text)


def to_dbus_error(err: PeripheralError) -> DBusError:
    """The D-Bus error bluetoothd would reply with for ``err``."""
    if err.code is SimErrorCode.ATT_ERROR:
        att = err.att_code if err.att_code is not None else 0x0E  # "unlikely error"
        return bluez_error("Failed", f"Operation failed with ATT error: 0x{att:02x}")
    if err.code is SimErrorCode.UNKNOWN_OBJECT:
        return DBusError(UNKNOWN_OBJECT, err.message or _DEFAULT_TEXT[err.code])
    return bluez_error(err.code.value, err.message or _DEFAULT_TEXT.get(err.code, err.code.value))
