"""Pure parts of the fake BlueZ: error mapping (checked against bleak's own reply parsing),
call shapes for the canary, discovery filters, and the ``ctl`` argument syntax."""

from __future__ import annotations

import pytest
from bleak.backends.bluezdbus.utils import assert_gatt_reply
from bleak.exc import BleakDBusError, BleakGATTProtocolError, BleakGATTProtocolErrorCode
from dbus_fast import Message, Variant

from firmware_sim.bluez.adapter import DiscoveryFilter
from firmware_sim.bluez.calls import RecordedCall, summarise_options
from firmware_sim.bluez.errors import to_dbus_error
from firmware_sim.cli import UsageError
from firmware_sim.ctl import _pairs
from firmware_sim.model.contract import Advertisement, PeripheralError, SimErrorCode, uuid16


def reply_for(err: PeripheralError) -> Message:
    dbus = to_dbus_error(err)
    call = Message(destination="org.bluez", path="/org/bluez/hci0", member="X", serial=7)
    return Message.new_error(call, dbus.type, dbus.text)


@pytest.mark.parametrize("code", [c for c in SimErrorCode if c is not SimErrorCode.ATT_ERROR])
def test_every_code_has_a_dbus_error_with_text(code: SimErrorCode) -> None:
    dbus = to_dbus_error(PeripheralError(code))
    if code is SimErrorCode.UNKNOWN_OBJECT:
        assert dbus.type == "org.freedesktop.DBus.Error.UnknownObject"
    else:
        assert dbus.type == f"org.bluez.Error.{code.value}"
    assert dbus.text


def test_att_errors_are_failed_with_bluez_wording() -> None:
    dbus = to_dbus_error(PeripheralError(SimErrorCode.ATT_ERROR, att_code=0x80))
    assert (dbus.type, dbus.text) == (
        "org.bluez.Error.Failed",
        "Operation failed with ATT error: 0x80",
    )


@pytest.mark.parametrize(
    ("err", "expected"),
    [
        (PeripheralError(SimErrorCode.ATT_ERROR, att_code=0x80), 0x80),
        (PeripheralError(SimErrorCode.ATT_ERROR, att_code=0x81), 0x81),
        (
            PeripheralError(SimErrorCode.NOT_AUTHORIZED),
            BleakGATTProtocolErrorCode.INSUFFICIENT_AUTHORIZATION,
        ),
        (
            PeripheralError(SimErrorCode.NOT_PERMITTED, "Read not permitted"),
            BleakGATTProtocolErrorCode.READ_NOT_PERMITTED,
        ),
        (
            PeripheralError(SimErrorCode.NOT_SUPPORTED),
            BleakGATTProtocolErrorCode.REQUEST_NOT_SUPPORTED,
        ),
        (
            PeripheralError(SimErrorCode.IMPROPERLY_CONFIGURED),
            BleakGATTProtocolErrorCode.CCCD_IMPROPERLY_CONFIGURED,
        ),
    ],
)
def test_gatt_errors_become_bleaks_protocol_errors(err: PeripheralError, expected: int) -> None:
    with pytest.raises(BleakGATTProtocolError) as info:
        assert_gatt_reply(reply_for(err))
    assert info.value.code == expected


def test_other_errors_reach_bleak_as_dbus_errors_with_their_text() -> None:
    with pytest.raises(BleakDBusError) as info:
        assert_gatt_reply(reply_for(PeripheralError(SimErrorCode.NOT_PERMITTED, "Not paired")))
    assert info.value.dbus_error == "org.bluez.Error.NotPermitted"
    assert info.value.dbus_error_details == "Not paired"


def test_call_shape_hides_addresses_and_handles() -> None:
    call = RecordedCall(
        ":1.5",
        "org.bluez.GattCharacteristic1",
        "WriteValue",
        "/org/bluez/hci0/dev_C1_22_33_44_55_66/service000a/char000b",
        "aya{sv}",
        summarise_options([b"\x01", {"type": Variant("s", "request")}]),
    )
    assert call.shape == (
        "org.bluez.GattCharacteristic1.WriteValue(aya{sv}){type=request} "
        "/org/bluez/hci0/dev_X/serviceN/charN"
    )
    remove = summarise_options(["/org/bluez/hci0/dev_C1_22_33_44_55_66"])
    assert remove == ("/org/bluez/hci0/dev_X",)


def test_discovery_filter_matches_uuids_in_any_form_rssi_and_pattern() -> None:
    adv = Advertisement(name="SIM-HR-1", service_uuids=(uuid16(0x180D),), rssi=-60)
    assert DiscoveryFilter().matches("C1:22:33:44:55:66", adv)
    assert DiscoveryFilter(frozenset({uuid16(0x180D)})).matches("C1:22", adv)
    assert not DiscoveryFilter(frozenset({uuid16(0x1808)})).matches("C1:22", adv)
    assert not DiscoveryFilter(rssi=-50).matches("C1:22", adv)
    assert DiscoveryFilter(pattern="SIM-HR").matches("C1:22", adv)
    assert not DiscoveryFilter(pattern="SIM-GLU").matches("C1:22", adv)


def test_ctl_key_value_arguments() -> None:
    assert _pairs(["connect_failures=2", "pairing-refused=failed", "invisible=true"]) == {
        "connect_failures": 2,
        "pairing_refused": "failed",
        "invisible": True,
    }
    assert _pairs(['{"concentration": "5.5"}']) == {"concentration": "5.5"}
    with pytest.raises(UsageError):
        _pairs(["novalue"])
    with pytest.raises(UsageError):
        _pairs(["{not json"])
