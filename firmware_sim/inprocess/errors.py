"""Simulated failures as the exceptions bleak's BlueZ backend raises for the same BlueZ reply."""

from __future__ import annotations

from typing import NoReturn

from bleak.exc import BleakDeviceNotFoundError, BleakError

from firmware_sim.model.contract import PeripheralError


def raise_as_bleak(
    err: PeripheralError, *, gatt: bool = False, start_notify: bool = False
) -> NoReturn:
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


def not_found(address: str, *, removed: bool = False) -> BleakDeviceNotFoundError:
    """bleak's error for an address BlueZ does not know; ``removed`` adds bleak's guess for a
    device that was seen before."""
    message = f"Device with address {address} was not found."
    if removed:
        message += " It may have been removed from BlueZ when scanning stopped."
    return BleakDeviceNotFoundError(address, message)
