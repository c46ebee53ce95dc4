"""The simulator's encoders against byte vectors computed by hand from the profile tables
(ble-profiles reference), independently of the gateway's codecs."""

from datetime import datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_sim import encoders as enc
from firmware_sim.encoders import GlucoseContext

T = datetime(2026, 1, 2, 3, 4, 5)  # a Friday
T_BYTES = "ea07 01 02 03 04 05"


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


@pytest.mark.parametrize(
    ("value", "raw"),
    [
        ("0.00105", 0xB069),  # 105 mg/dL as kg/L: 105 x 10^-5
        ("0.0055", 0xC037),  # 5.5 mmol/L as mol/L: 55 x 10^-4
        ("0.00550", 0xB226),  # 5.50 keeps its precision: 550 x 10^-5
        ("-1", 0x0FFF),  # -1, not NaN
        ("0", 0x0000),
        ("20000", 0x17D0),  # 2000 x 10^1
        ("0.045", 0xD02D),  # 45 g as kg
        ("6.5", 0xF041),
        ("-2.5", 0xFFE7),  # mantissa -25 (0xFE7), exponent -1
    ],
)
def test_sfloat_vectors(value: str, raw: int) -> None:
    assert enc.sfloat(Decimal(value)) == raw
    assert enc.sfloat_bytes(Decimal(value)) == raw.to_bytes(2, "little")


def test_sfloat_never_produces_a_special_value() -> None:
    for v in ("2046", "2047", "-2046", "-2047", "-2048", "204.7"):
        assert enc.sfloat(Decimal(v)) not in {
            enc.SFLOAT_NAN,
            enc.SFLOAT_NRES,
            enc.SFLOAT_POS_INFINITY,
            enc.SFLOAT_NEG_INFINITY,
            enc.SFLOAT_RESERVED,
        }
    assert enc.sfloat(Decimal("2047")) == 0x10CD  # rounded to 205 x 10^1


def test_sfloat_rejects_non_finite() -> None:
    with pytest.raises(enc.EncodeError):
        enc.sfloat(Decimal("NaN"))


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"bpm": 72}, "00 48"),
        ({"bpm": 72, "contact": False}, "04 48"),  # supported, not detected: field = 2
        ({"bpm": 72, "contact": True, "rr_1024": [1024, 820]}, "16 48 0004 3403"),
        ({"bpm": 300, "uint16": True, "energy_kj": 0x1234}, "09 2c01 3412"),
        ({"bpm": 72, "reserved_bits": 0b111}, "e0 48"),
        (
            {"bpm": 60, "contact": True, "energy_kj": 5, "rr_1024": [1000]},
            "1e 3c 0500 e803",
        ),
    ],
)
def test_heart_rate_measurement_vectors(kwargs: dict[str, object], expected: str) -> None:
    assert enc.heart_rate_measurement(**kwargs) == h(expected)  # type: ignore[arg-type]


def test_heart_rate_uint8_overflow_is_refused() -> None:
    with pytest.raises(enc.EncodeError):
        enc.heart_rate_measurement(300)


@pytest.mark.parametrize(
    ("uint16", "energy", "n"),
    [(False, False, 9), (False, True, 8), (True, False, 8), (True, True, 7)],
)
def test_rr_cap_at_default_mtu(uint16: bool, energy: bool, n: int) -> None:
    assert enc.max_rr_intervals(mtu=23, uint16=uint16, energy=energy) == n
    value = enc.heart_rate_measurement(
        70, uint16=uint16, energy_kj=1 if energy else None, rr_1024=[900] * n
    )
    assert len(value) <= 20  # ATT payload at MTU 23


def test_glucose_measurement_mg_dl_with_negative_time_offset() -> None:
    value = enc.glucose_measurement(
        7, T, time_offset=-60, concentration=Decimal(105), unit="mg/dL", sample_type=2, location=1
    )
    assert value == h(f"03 0700 {T_BYTES} c4ff 69b0 12")


def test_glucose_measurement_mmol_status_high_and_context_flag() -> None:
    value = enc.glucose_measurement(
        7,
        T,
        concentration=Decimal("5.5"),
        unit="mmol/L",
        sample_type=2,
        location=1,
        status=enc.STATUS_RESULT_HIGH,
        context_follows=True,
    )
    assert value == h(f"1e 0700 {T_BYTES} 37c0 12 2000")


def test_glucose_measurement_control_solution_and_low_status() -> None:
    value = enc.glucose_measurement(
        0xFFFF,
        T,
        concentration=Decimal(20),
        sample_type=enc.TYPE_CONTROL_SOLUTION,
        location=enc.LOCATION_CONTROL_SOLUTION,
        status=enc.STATUS_RESULT_LOW,
    )
    # 20 mg/dL = 2 x 10^-4 kg/L after dropping the trailing zero: mantissa 20, exponent -5
    assert value == h(f"0a ffff {T_BYTES} 14b0 4a 4000")


def test_glucose_measurement_raw_special_and_reserved_flags() -> None:
    value = enc.glucose_measurement(
        1, T, concentration_raw=enc.SFLOAT_NAN, reserved_bits=0b111, time_offset=None
    )
    assert value == h(f"e2 0100 {T_BYTES} ff07 12")


def test_glucose_context_carbs_meal_tester_health() -> None:
    ctx = GlucoseContext(
        carbohydrate_id=1, carbohydrate_grams=Decimal(45), meal=1, tester=1, health=5
    )
    assert enc.glucose_context(7, ctx) == h("07 0700 01 2dd0 01 51")


def test_glucose_context_all_fields_in_order() -> None:
    ctx = GlucoseContext(
        extended_flags=0,
        carbohydrate_id=2,
        carbohydrate_grams=Decimal(45),
        meal=2,
        tester=1,
        health=1,
        exercise_seconds=600,
        exercise_intensity=50,
        medication_id=1,
        medication_amount=Decimal(5),
        hba1c_percent=Decimal("6.5"),
    )
    # flags: ext 0x80 | carb 0x01 | meal 0x02 | tester 0x04 | exercise 0x08 | med 0x10 | hba1c 0x40
    assert enc.glucose_context(7, ctx) == h("df 0700 00 02 2dd0 02 11 5802 32 01 05a0 41f0")


def test_glucose_context_medication_in_litres() -> None:
    ctx = GlucoseContext(medication_id=3, medication_amount=Decimal(2), medication_in_litres=True)
    assert enc.glucose_context(1, ctx) == h("30 0100 03 02d0")


def test_racp_messages() -> None:
    assert enc.racp_response(1, enc.RSP_SUCCESS) == h("06 00 01 01")
    assert enc.racp_response(1, enc.RSP_NO_RECORDS_FOUND) == h("06 00 01 06")
    assert enc.racp_number_response(300) == h("05 00 2c 01")


def test_current_time_and_simple_values() -> None:
    assert enc.current_time(T) == h(f"{T_BYTES} 05 00 00")
    assert enc.uint16(0x037F) == h("7f 03")
    assert enc.uint8(1) == h("01")
    assert enc.utf8("SIM") == b"SIM"


def decode_sfloat(raw: int) -> Decimal:
    """An independent reader for the round trip (two's complement nibble and 12 bits)."""
    exponent = raw >> 12
    mantissa = raw & 0x0FFF
    if exponent >= 8:
        exponent -= 16
    if mantissa >= 0x800:
        mantissa -= 0x1000
    return Decimal(mantissa).scaleb(exponent)


@given(
    mantissa=st.integers(min_value=-2045, max_value=2045),
    exponent=st.integers(min_value=-8, max_value=7),
)
def test_sfloat_round_trips_every_representable_value(mantissa: int, exponent: int) -> None:
    value = Decimal(mantissa).scaleb(exponent)
    raw = enc.sfloat(value)
    assert decode_sfloat(raw) == value
    assert 0 <= raw <= 0xFFFF
