"""One target per public GATT decoder. Each lets :class:`MalformedPayload` through and
nothing else; where an encoder exists, what decodes must survive encode -> decode unchanged."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from edge.errors import MalformedPayload
from edge.gatt import racp as racp_mod
from edge.gatt.battery import decode_battery_level
from edge.gatt.current_time import decode_current_time, encode_current_time
from edge.gatt.device_information import decode_utf8_string
from edge.gatt.glucose import decode_glucose_measurement, encode_glucose_measurement
from edge.gatt.glucose_context import decode_glucose_context, encode_glucose_context
from edge.gatt.glucose_feature import decode_glucose_feature, encode_glucose_feature
from edge.gatt.heart_rate import (
    decode_body_sensor_location,
    decode_heart_rate_control_point,
    decode_heart_rate_measurement,
    encode_body_sensor_location,
    encode_heart_rate_measurement,
)
from edge.gatt.sfloat import SfloatSpecial, decode_sfloat, encode_sfloat


def sfloat(data: bytes) -> None:
    """The word from the first two octets; the rest as the text of a Decimal to encode."""
    word = int.from_bytes(data[:2].ljust(2, b"\0"), "little")
    value = decode_sfloat(word)
    if isinstance(value, Decimal):
        back = decode_sfloat(encode_sfloat(value))
        assert back == value, (hex(word), value, back)
    else:
        assert encode_sfloat(value) == word
    try:
        dec = Decimal(data[2:].decode("latin-1"))
    except (InvalidOperation, ValueError):
        return
    try:
        encoded = encode_sfloat(dec)
    except ValueError:
        return
    assert 0 <= encoded <= 0xFFFF
    again = decode_sfloat(encoded)
    assert not isinstance(again, SfloatSpecial) and again == dec, (dec, again)


def heart_rate_measurement(data: bytes) -> None:
    try:
        m = decode_heart_rate_measurement(data)
    except MalformedPayload:
        return
    assert len(m.rr_intervals_s) == len(m.rr_intervals_raw)
    assert decode_heart_rate_measurement(encode_heart_rate_measurement(m)) == m


def body_sensor_location(data: bytes) -> None:
    try:
        loc = decode_body_sensor_location(data)
    except MalformedPayload:
        return
    assert encode_body_sensor_location(loc) == data


def heart_rate_control_point(data: bytes) -> None:
    try:
        op = decode_heart_rate_control_point(data)
    except MalformedPayload:
        return
    assert bytes([op]) == data


def glucose_measurement(data: bytes) -> None:
    try:
        m = decode_glucose_measurement(data)
    except MalformedPayload:
        return
    # the derived values the rest of the hub reads must not raise either
    _ = (m.device_time, m.mg_dl, m.mmol_l, m.status, m.has_concentration)
    assert decode_glucose_measurement(encode_glucose_measurement(m)) == m


def glucose_context(data: bytes) -> None:
    try:
        c = decode_glucose_context(data)
    except MalformedPayload:
        return
    assert decode_glucose_context(encode_glucose_context(c)) == c


def glucose_feature(data: bytes) -> None:
    try:
        f = decode_glucose_feature(data)
    except MalformedPayload:
        return
    assert decode_glucose_feature(encode_glucose_feature(f.features)).features == f.features


def current_time(data: bytes) -> None:
    try:
        ct = decode_current_time(data)
    except MalformedPayload:
        return
    _ = ct.adjust_reasons
    exact = ct.exact_time
    again = decode_current_time(encode_current_time(exact, ct.adjust_reason_bits))
    assert again.date_time == ct.date_time
    assert again.fractions256 == ct.fractions256
    assert again.adjust_reason_bits == ct.adjust_reason_bits
    assert again.day_of_week == ct.date_time.isoweekday()


def racp(data: bytes) -> None:
    try:
        msg = racp_mod.decode_racp(data)
    except MalformedPayload:
        return
    if isinstance(msg, racp_mod.RacpRequest):
        encoded = msg.encode()
    elif isinstance(msg, racp_mod.RacpNumberOfRecords):
        encoded = racp_mod.encode_number_of_records(msg.number_of_records)
    else:
        encoded = racp_mod.encode_response_code(msg.request_opcode, msg.response)
    assert racp_mod.decode_racp(encoded) == msg


def battery_level(data: bytes) -> None:
    try:
        level = decode_battery_level(data)
    except MalformedPayload:
        return
    assert 0 <= level <= 100


def device_information(data: bytes) -> None:
    try:
        text = decode_utf8_string("manufacturer_name", data)
    except MalformedPayload:
        return
    assert text.encode("utf-8") == data.rstrip(b"\0")
