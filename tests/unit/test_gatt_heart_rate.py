"""Heart Rate Measurement 0x2A37, Body Sensor Location 0x2A38, control point 0x2A39."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.errors import MalformedPayload
from edge.gatt.heart_rate import (
    BodySensorLocation,
    HeartRateControlOpcode,
    HeartRateMeasurement,
    SensorContact,
    decode_body_sensor_location,
    decode_heart_rate_control_point,
    decode_heart_rate_measurement,
    encode_body_sensor_location,
    encode_heart_rate_measurement,
    encode_reset_energy_expended,
)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


@pytest.mark.parametrize(
    ("flags", "contact"),
    [
        (0x00, SensorContact.NOT_SUPPORTED),
        (0x02, SensorContact.NOT_SUPPORTED),  # bit 1 alone: field value 1
        (0x04, SensorContact.NOT_DETECTED),  # bit 2 = supported, bit 1 clear = not detected
        (0x06, SensorContact.DETECTED),
    ],
)
def test_sensor_contact_is_a_two_bit_field_not_inverted(
    flags: int, contact: SensorContact
) -> None:
    assert decode_heart_rate_measurement(bytes([flags, 72])).sensor_contact is contact


def test_uint8_value() -> None:
    m = decode_heart_rate_measurement(h("0048"))
    assert m == HeartRateMeasurement(72, SensorContact.NOT_SUPPORTED)
    assert m.energy_expended_kj is None and m.rr_intervals_s == ()


def test_uint16_value_energy_and_rr() -> None:
    m = decode_heart_rate_measurement(h("19 2C01 E803 0004".replace(" ", "")))
    assert m.heart_rate_bpm == 300
    assert m.uint16_format
    assert m.energy_expended_kj == 1000
    assert m.rr_intervals_raw == (1024,)
    assert m.rr_intervals_s == (Decimal(1),)


def test_rr_intervals_in_seconds_exact_oldest_first() -> None:
    m = decode_heart_rate_measurement(h("1648" "0004" "0002" "3303"))
    assert m.rr_intervals_raw == (1024, 512, 0x0333)
    assert m.rr_intervals_s == (Decimal(1), Decimal("0.5"), Decimal("0.7998046875"))


def test_nine_rr_values_fit_the_default_mtu() -> None:
    payload = h("1048") + h("0004") * 9
    assert len(payload) <= 20
    assert len(decode_heart_rate_measurement(payload).rr_intervals_raw) == 9


def test_reserved_flag_bits_are_ignored() -> None:
    assert decode_heart_rate_measurement(h("E648")) == decode_heart_rate_measurement(h("0648"))


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ("", "truncated in flags"),
        ("00", "truncated in heart rate"),
        ("0148", "truncated in heart rate"),
        ("0848", "truncated in energy"),
        ("084810", "truncated in energy"),
        ("1048", "no RR interval"),
        ("10480004 00", "odd number"),
        ("004800", "trailing"),
        ("01480000", "trailing"),
    ],
)
def test_malformed(payload: str, reason: str) -> None:
    with pytest.raises(MalformedPayload, match=reason) as info:
        decode_heart_rate_measurement(h(payload.replace(" ", "")))
    assert info.value.characteristic == "heart_rate_measurement"


def test_bytearray_accepted_and_non_bytes_rejected_cleanly() -> None:
    assert decode_heart_rate_measurement(bytearray(h("0648"))).heart_rate_bpm == 72
    with pytest.raises(MalformedPayload):
        decode_heart_rate_measurement("0648")  # type: ignore[arg-type]


measurements = st.builds(
    HeartRateMeasurement,
    heart_rate_bpm=st.integers(0, 0xFFFF),
    sensor_contact=st.sampled_from(SensorContact),
    energy_expended_kj=st.none() | st.integers(0, 0xFFFF),
    rr_intervals_raw=st.lists(st.integers(0, 0xFFFF), max_size=9).map(tuple),
    uint16_format=st.booleans(),
).map(
    # the decoder reports uint16 format whenever the encoder had to use it
    lambda m: HeartRateMeasurement(
        m.heart_rate_bpm, m.sensor_contact, m.energy_expended_kj, m.rr_intervals_raw,
        m.uint16_format or m.heart_rate_bpm > 0xFF,
    )
)


@given(measurements)
def test_round_trip(m: HeartRateMeasurement) -> None:
    assert decode_heart_rate_measurement(encode_heart_rate_measurement(m)) == m


@given(measurements, st.binary(min_size=1, max_size=3))
def test_prefixes_and_trailing_garbage_rejected(m: HeartRateMeasurement, junk: bytes) -> None:
    payload = encode_heart_rate_measurement(m)
    rr_start = len(payload) - 2 * len(m.rr_intervals_raw)
    for cut in range(len(payload)):
        # A cut at an RR boundary (after the first one) is itself a valid, shorter measurement.
        if m.rr_intervals_raw and cut > rr_start and (cut - rr_start) % 2 == 0:
            assert decode_heart_rate_measurement(payload[:cut]).rr_intervals_raw == (
                m.rr_intervals_raw[: (cut - rr_start) // 2]
            )
            continue
        with pytest.raises(MalformedPayload):
            decode_heart_rate_measurement(payload[:cut])
    if m.rr_intervals_raw and len(junk) % 2 == 0:
        return  # an even number of extra octets reads as more RR intervals
    with pytest.raises(MalformedPayload):
        decode_heart_rate_measurement(payload + junk)


@pytest.mark.parametrize("code", range(7))
def test_body_sensor_location(code: int) -> None:
    loc = decode_body_sensor_location(bytes([code]))
    assert loc is list(BodySensorLocation)[code]
    assert encode_body_sensor_location(loc) == bytes([code])


def test_body_sensor_location_names() -> None:
    assert decode_body_sensor_location(b"\x01") is BodySensorLocation.CHEST
    assert decode_body_sensor_location(b"\x05").value == "ear_lobe"


@pytest.mark.parametrize("payload", [b"", b"\x07", b"\xff", b"\x01\x00"])
def test_body_sensor_location_malformed(payload: bytes) -> None:
    with pytest.raises(MalformedPayload) as info:
        decode_body_sensor_location(payload)
    assert info.value.characteristic == "body_sensor_location"


def test_control_point() -> None:
    assert encode_reset_energy_expended() == b"\x01"
    assert decode_heart_rate_control_point(b"\x01") is HeartRateControlOpcode.RESET_ENERGY_EXPENDED
    for bad in (b"", b"\x00", b"\x02", b"\x01\x01"):
        with pytest.raises(MalformedPayload):
            decode_heart_rate_control_point(bad)
