"""bleak's exceptions translated at the boundary: fixed words, never the address they carry."""

from __future__ import annotations

from bleak.exc import (
    BleakDBusError,
    BleakDeviceNotFoundError,
    BleakError,
    BleakGATTProtocolError,
)

from edge.ble.errors import att_code, ble_error, is_auth_error, reason_of, stack_error

ADDR = "AA:BB:CC:DD:EE:FF"


def test_reasons_are_fixed_words_without_the_address() -> None:
    cases = {
        BleakDBusError("org.bluez.Error.InProgress", []): "dbus:InProgress",
        BleakGATTProtocolError(0x80): "att:0x80",
        BleakDeviceNotFoundError(ADDR, f"Device with address {ADDR} was not found."): "not_found",
        BleakError(f"Device with address {ADDR} was not found."): "not_found",
        BleakError(f"{ADDR}: something odd"): "BleakError",
        TimeoutError(): "timeout",
    }
    for exc, word in cases.items():
        assert reason_of(exc) == word
        err = ble_error("connect", exc)
        assert ADDR not in str(err) and str(err) == f"connect failed ({word})"


def test_att_codes_from_either_form() -> None:
    assert att_code(BleakGATTProtocolError(0x80)) == 0x80
    failed = BleakDBusError("org.bluez.Error.Failed", ["Operation failed with ATT error: 0x81"])
    assert att_code(failed) == 0x81
    abort = BleakDBusError("org.bluez.Error.Failed", ["le-connection-abort-by-local"])
    assert att_code(abort) is None
    assert att_code(TimeoutError()) is None


def test_auth_errors() -> None:
    assert is_auth_error(BleakDBusError("org.bluez.Error.AuthenticationRejected", []))
    assert is_auth_error(BleakGATTProtocolError(0x05))
    assert not is_auth_error(BleakDBusError("org.bluez.Error.InProgress", []))


def test_unreachable_bluez_tells_the_operator_what_to_check() -> None:
    for exc in (FileNotFoundError(2, "No such file", "/run/dbus/system_bus_socket"),
                BleakDBusError("org.freedesktop.DBus.Error.AccessDenied", [])):
        msg = str(stack_error("scan", exc))
        assert "bluetoothd" in msg and "bluetooth group" in msg
    assert str(stack_error("scan", BleakGATTProtocolError(0x80))) == "scan failed (att:0x80)"
