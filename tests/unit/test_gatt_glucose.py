"""Glucose Measurement 0x2A18, Context 0x2A34, Feature 0x2A51; Current Time, battery, strings."""

from __future__ import annotations

import contextlib
from datetime import datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.errors import MalformedPayload
from edge.gatt import glucose_context
from edge.gatt.battery import decode_battery_level
from edge.gatt.current_time import AdjustReason, decode_current_time, encode_current_time
from edge.gatt.device_information import decode_utf8_string
from edge.gatt.glucose import (
    GlucoseMeasurement,
    GlucoseStatus,
    GlucoseUnit,
    SampleLocation,
    SampleType,
    decode_glucose_measurement,
    encode_glucose_measurement,
    status_to_bits,
)
from edge.gatt.glucose_context import (
    Carbohydrate,
    GlucoseContext,
    Health,
    Meal,
    Medication,
    MedicationUnit,
    decode_glucose_context,
    encode_glucose_context,
)
from edge.gatt.glucose_feature import (
    GlucoseFeatureBit,
    decode_glucose_feature,
    encode_glucose_feature,
)
from edge.gatt.sfloat import SfloatSpecial


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# Hand-assembled from the reference table (not from our encoder).
#  flags 03 (offset + concentration, kg/L) | seq 1 | 2026-03-15 08:30:00 | offset -5 min |
#  0x B05F = 95 x 10^-5 kg/L = 95 mg/dL | type 1 capillary whole blood, location 1 finger
V_KG = "03 0100 EA07 03 0F 08 1E 00 FBFF 5FB0 11"
#  flags 0E (concentration, mol/L, status) | seq 0x1234 | 2026-01-02 03:04:05 |
#  0x B226 = 550 x 10^-5 mol/L = 5.50 mmol/L | type 4 venous plasma, location 2 alt. site |
#  status bit 5 (result higher than the device can process)
V_MOL = "0E 3412 EA07 01 02 03 04 05 26B2 24 2000"


def test_kg_per_litre_vector_with_signed_offset() -> None:
    m = decode_glucose_measurement(h(V_KG))
    assert m.sequence_number == 1
    assert m.base_time == datetime(2026, 3, 15, 8, 30, 0)
    assert m.time_offset_min == -5  # trap: read unsigned it would be 65531
    assert m.device_time == datetime(2026, 3, 15, 8, 25, 0)
    assert m.unit is GlucoseUnit.KG_PER_L
    assert m.concentration == Decimal("0.00095")
    assert m.mg_dl == Decimal(95)
    assert m.mmol_l == Decimal("5.27")  # 95 / 18.0156 = 5.2732...
    assert m.sample_type is SampleType.CAPILLARY_WHOLE_BLOOD
    assert m.sample_location is SampleLocation.FINGER
    assert m.status_bits is None and m.status == ()
    assert not m.context_follows


def test_mol_per_litre_vector_keeps_precision_and_status_bit5_is_high() -> None:
    m = decode_glucose_measurement(h(V_MOL))
    assert m.sequence_number == 0x1234
    assert m.time_offset_min is None
    assert m.device_time == m.base_time == datetime(2026, 1, 2, 3, 4, 5)
    assert m.unit is GlucoseUnit.MOL_PER_L
    assert str(m.mmol_l) == "5.50"  # trap: precision kept, not 5.5
    assert m.mg_dl == Decimal("99.1")  # 5.50 x 18.0156 = 99.0858 (not x 18 = 99.0)
    assert m.sample_type is SampleType.VENOUS_PLASMA
    assert m.sample_location is SampleLocation.ALTERNATE_SITE
    assert m.status == (GlucoseStatus.RESULT_TOO_HIGH,)  # trap: bits 5/6 not swapped


def test_status_bit6_is_low() -> None:
    m = decode_glucose_measurement(h(V_MOL[:-4] + "4000"))
    assert m.status == (GlucoseStatus.RESULT_TOO_LOW,)


def test_every_status_bit_in_order_and_reserved_bits_ignored() -> None:
    all_bits = decode_glucose_measurement(h(V_MOL[:-4] + "FF0F")).status
    assert [s.value for s in all_bits] == [
        "battery_low", "sensor_malfunction", "sample_size_insufficient",
        "strip_insertion_error", "strip_type_incorrect", "result_too_high", "result_too_low",
        "temperature_too_high", "temperature_too_low", "strip_pulled_too_soon",
        "device_fault", "time_fault",
    ]
    assert decode_glucose_measurement(h(V_MOL[:-4] + "FFFF")).status == all_bits
    for bit, status in enumerate(GlucoseStatus):
        word = (1 << bit).to_bytes(2, "little").hex()
        assert decode_glucose_measurement(h(V_MOL[:-4] + word)).status == (status,)


def test_positive_offset_and_context_follows() -> None:
    m = decode_glucose_measurement(h("11 0200 EA07 03 0F 08 1E 00 3C00"))
    assert m.time_offset_min == 60
    assert m.device_time == datetime(2026, 3, 15, 9, 30)
    assert m.context_follows
    assert m.concentration is None and m.mg_dl is None and m.sample_type is None


@pytest.mark.parametrize("special", list(SfloatSpecial))
def test_special_concentration_is_carried_not_a_number(special: SfloatSpecial) -> None:
    word = {"nan": "FF07", "nres": "0008", "+inf": "FE07", "-inf": "0208", "reserved": "0108"}
    m = decode_glucose_measurement(h(f"02 0100 EA07 03 0F 08 1E 00 {word[special.value]} 11"))
    assert m.concentration is None
    assert m.concentration_special is special
    assert m.mg_dl is None and m.mmol_l is None
    assert m.has_concentration


def test_0x0fff_concentration_is_minus_one_not_nan() -> None:
    m = decode_glucose_measurement(h("02 0100 EA07 03 0F 08 1E 00 FF0F 11"))
    assert m.concentration == -1 and m.concentration_special is None


def test_reserved_flag_bits_ignored() -> None:
    a = decode_glucose_measurement(h(V_KG))
    b = decode_glucose_measurement(h("E3" + V_KG.replace(" ", "")[2:]))
    assert a == b


@pytest.mark.parametrize(
    ("date_time", "why"),
    [
        ("EA07 0D 0F 08 1E 00", "month 13"),
        ("EA07 00 0F 08 1E 00", "month 0 (unknown)"),
        ("EA07 02 1E 08 1E 00", "30 February"),
        ("EA07 03 20 08 1E 00", "day 32"),
        ("EA07 03 0F 18 1E 00", "hour 24"),
        ("EA07 03 0F 08 3C 00", "minute 60"),
        ("EA07 03 0F 08 1E 3C", "second 60"),
        ("0000 03 0F 08 1E 00", "year 0 (unknown)"),
    ],
)
def test_invalid_base_time_is_malformed(date_time: str, why: str) -> None:
    with pytest.raises(MalformedPayload, match="invalid base time"):
        decode_glucose_measurement(h(f"00 0100 {date_time}"))


def test_offset_leaving_the_calendar_is_malformed() -> None:
    with pytest.raises(MalformedPayload, match="calendar"):
        decode_glucose_measurement(h("01 0100 0F27 0C 1F 17 3B 3B FF7F"))  # 9999-12-31 + 32767


@pytest.mark.parametrize(
    ("type_location", "why"),
    [("10", "sample type 0"), ("1B", "sample type 11"), ("01", "location 0"), ("51", "location 5")],
)
def test_reserved_type_or_location_is_malformed(type_location: str, why: str) -> None:
    with pytest.raises(MalformedPayload, match=why):
        decode_glucose_measurement(h(f"02 0100 EA07 03 0F 08 1E 00 5FB0 {type_location}"))


def test_control_solution_and_not_available_location() -> None:
    m = decode_glucose_measurement(h("02 0100 EA07 03 0F 08 1E 00 5FB0 4A"))
    assert m.sample_type is SampleType.CONTROL_SOLUTION
    assert m.sample_location is SampleLocation.CONTROL_SOLUTION
    m = decode_glucose_measurement(h("02 0100 EA07 03 0F 08 1E 00 5FB0 F9"))
    assert m.sample_type is SampleType.INTERSTITIAL_FLUID
    assert m.sample_location is SampleLocation.NOT_AVAILABLE


@pytest.mark.parametrize("vector", [V_KG, V_MOL, "1F 0100 EA07 03 0F 08 1E 00 FBFF 5FB0 11 2000"])
def test_every_strict_prefix_and_trailing_garbage_rejected(vector: str) -> None:
    payload = h(vector)
    decode_glucose_measurement(payload)
    for cut in range(len(payload)):
        with pytest.raises(MalformedPayload) as info:
            decode_glucose_measurement(payload[:cut])
        assert info.value.characteristic == "glucose_measurement"
    with pytest.raises(MalformedPayload, match="trailing"):
        decode_glucose_measurement(payload + b"\x00")


# --- property tests ---------------------------------------------------------------------------

decimals_in_sfloat = st.builds(
    lambda m, e: Decimal(m).scaleb(e), st.integers(-2045, 2045), st.integers(-8, 0)
)
datetimes = st.datetimes(datetime(1900, 1, 1), datetime(9000, 12, 31)).map(
    lambda d: d.replace(microsecond=0)
)


@st.composite
def glucose_measurements(draw: st.DrawFn) -> GlucoseMeasurement:
    has_conc = draw(st.booleans())
    special = draw(st.none() | st.sampled_from(SfloatSpecial)) if has_conc else None
    return GlucoseMeasurement(
        sequence_number=draw(st.integers(0, 0xFFFF)),
        base_time=draw(datetimes),
        time_offset_min=draw(st.none() | st.integers(-0x8000, 0x7FFF)),
        concentration=draw(decimals_in_sfloat) if has_conc and special is None else None,
        concentration_special=special,
        unit=draw(st.sampled_from(GlucoseUnit)),
        sample_type=draw(st.sampled_from(SampleType)) if has_conc else None,
        sample_location=draw(st.sampled_from(SampleLocation)) if has_conc else None,
        status_bits=draw(st.none() | st.integers(0, 0x0FFF)),
        context_follows=draw(st.booleans()),
    )


@given(glucose_measurements())
def test_measurement_round_trip(m: GlucoseMeasurement) -> None:
    decoded = decode_glucose_measurement(encode_glucose_measurement(m))
    assert decoded == m
    if m.concentration is not None:
        assert decoded.concentration is not None
        assert decoded.concentration.as_tuple() == m.concentration.as_tuple()


@given(glucose_measurements(), st.binary(min_size=1, max_size=4))
def test_measurement_prefixes_and_trailing_rejected(m: GlucoseMeasurement, junk: bytes) -> None:
    payload = encode_glucose_measurement(m)
    for cut in range(len(payload)):
        with pytest.raises(MalformedPayload):
            decode_glucose_measurement(payload[:cut])
    with pytest.raises(MalformedPayload):
        decode_glucose_measurement(payload + junk)


@given(st.binary(max_size=24))
def test_arbitrary_bytes_only_ever_raise_malformed(data: bytes) -> None:
    for decode in (decode_glucose_measurement, decode_glucose_context, decode_glucose_feature,
                   decode_current_time):
        with contextlib.suppress(MalformedPayload):
            decode(data)


def test_status_to_bits() -> None:
    assert status_to_bits((GlucoseStatus.RESULT_TOO_HIGH,)) == 0x20
    assert status_to_bits((GlucoseStatus.RESULT_TOO_LOW, GlucoseStatus.TIME_FAULT)) == 0x840


# --- context ----------------------------------------------------------------------------------

#  flags 7F | seq 7 | carb 1 breakfast, 0x D032 = 50 x 10^-3 kg | meal 3 fasting |
#  tester 1 self / health 5 no issues | exercise 1800 s, 50 % |
#  medication 1 rapid acting, 0x D005 = 5 x 10^-3 L (bit 5) | HbA1c 0x F041 = 6.5 %
C_FULL = "7F 0700 01 32D0 03 51 0807 32 01 05D0 41F0"


def test_context_full_vector() -> None:
    c = decode_glucose_context(h(C_FULL))
    assert c == GlucoseContext(
        sequence_number=7,
        carbohydrate_id=Carbohydrate.BREAKFAST,
        carbohydrate_kg=Decimal("0.050"),
        meal=Meal.FASTING,
        tester=glucose_context.Tester.SELF,
        health=Health.NO_HEALTH_ISSUES,
        exercise_duration_s=1800,
        exercise_intensity_percent=50,
        medication_id=Medication.RAPID_ACTING_INSULIN,
        medication=Decimal("0.005"),
        medication_unit=MedicationUnit.LITRES,
        hba1c_percent=Decimal("6.5"),
    )
    assert str(c.carbohydrate_kg) == "0.050"


def test_context_meal_only() -> None:
    c = decode_glucose_context(h("02 0100 01"))
    assert c.sequence_number == 1 and c.meal is Meal.PREPRANDIAL
    assert c.extended_flags is None and c.carbohydrate_id is None


def test_context_extended_flags_come_right_after_the_sequence_number() -> None:
    # trap: read after the meal, the extended flags octet (00) would be taken as meal 0
    c = decode_glucose_context(h("82 0100 00 02"))
    assert c.extended_flags == 0
    assert c.meal is Meal.POSTPRANDIAL


def test_context_medication_in_kilograms() -> None:
    c = decode_glucose_context(h("10 0100 03 05D0"))
    assert c.medication_id is Medication.INTERMEDIATE_ACTING_INSULIN
    assert c.medication_unit is MedicationUnit.KILOGRAMS


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        ("02 0100 00", "reserved meal 0"),
        ("02 0100 06", "reserved meal 6"),
        ("01 0100 08 32D0", "reserved carbohydrate id 8"),
        ("04 0100 54", "reserved tester 4"),
        ("04 0100 61", "reserved health 6"),
        ("08 0100 0807 65", "above 100"),
        ("10 0100 06 05D0", "reserved medication id 6"),
        ("40 0100 FF07", "HbA1c is an SFLOAT special"),
        ("01 0100 01 0008", "carbohydrate is an SFLOAT special"),
        ("10 0100 01 FE07", "medication is an SFLOAT special"),
    ],
)
def test_context_malformed(payload: str, why: str) -> None:
    with pytest.raises(MalformedPayload, match=why) as info:
        decode_glucose_context(h(payload))
    assert info.value.characteristic == "glucose_context"


def test_context_prefixes_and_trailing_rejected() -> None:
    for vector in (C_FULL, "82 0100 00 02"):
        payload = h(vector)
        for cut in range(len(payload)):
            with pytest.raises(MalformedPayload):
                decode_glucose_context(payload[:cut])
        with pytest.raises(MalformedPayload, match="trailing"):
            decode_glucose_context(payload + b"\x01")


@st.composite
def contexts(draw: st.DrawFn) -> GlucoseContext:
    carb = draw(st.booleans())
    med = draw(st.booleans())
    th = draw(st.booleans())
    ex = draw(st.booleans())
    return GlucoseContext(
        sequence_number=draw(st.integers(0, 0xFFFF)),
        extended_flags=draw(st.none() | st.integers(0, 0xFF)),
        carbohydrate_id=draw(st.sampled_from(Carbohydrate)) if carb else None,
        carbohydrate_kg=draw(decimals_in_sfloat) if carb else None,
        meal=draw(st.none() | st.sampled_from(Meal)),
        tester=draw(st.sampled_from(glucose_context.Tester)) if th else None,
        health=draw(st.sampled_from(Health)) if th else None,
        exercise_duration_s=draw(st.integers(0, 0xFFFF)) if ex else None,
        exercise_intensity_percent=draw(st.integers(0, 100)) if ex else None,
        medication_id=draw(st.sampled_from(Medication)) if med else None,
        medication=draw(decimals_in_sfloat) if med else None,
        medication_unit=draw(st.sampled_from(MedicationUnit)) if med else None,
        hba1c_percent=draw(st.none() | decimals_in_sfloat),
    )


@given(contexts(), st.binary(min_size=1, max_size=3))
def test_context_round_trip_prefixes_trailing(c: GlucoseContext, junk: bytes) -> None:
    payload = encode_glucose_context(c)
    assert decode_glucose_context(payload) == c
    for cut in range(len(payload)):
        with pytest.raises(MalformedPayload):
            decode_glucose_context(payload[:cut])
    with pytest.raises(MalformedPayload):
        decode_glucose_context(payload + junk)


# --- feature ----------------------------------------------------------------------------------


def test_feature() -> None:
    assert decode_glucose_feature(h("FF07")).features == tuple(GlucoseFeatureBit)
    assert decode_glucose_feature(h("FFFF")).features == tuple(GlucoseFeatureBit)
    f = decode_glucose_feature(h("2004"))
    assert f.features == (
        GlucoseFeatureBit.SENSOR_RESULT_HIGH_LOW_DETECTION,
        GlucoseFeatureBit.MULTIPLE_BOND_SUPPORTED,
    )
    assert f.supports(GlucoseFeatureBit.MULTIPLE_BOND_SUPPORTED)
    assert not f.supports(GlucoseFeatureBit.TIME_FAULT)
    assert decode_glucose_feature(encode_glucose_feature(f.features)) == f
    for bad in ("", "FF", "FF0700"):
        with pytest.raises(MalformedPayload) as info:
            decode_glucose_feature(h(bad))
        assert info.value.characteristic == "glucose_feature"


# --- Current Time, battery, strings -------------------------------------------------------------

#  2026-03-15 08:30:15, day of week 7 (Sunday), fractions 0x80 = 0.5 s, adjust reason manual
CT = "EA07 03 0F 08 1E 0F 07 80 01"


def test_current_time_vector() -> None:
    t = decode_current_time(h(CT))
    assert t.date_time == datetime(2026, 3, 15, 8, 30, 15)
    assert t.exact_time == datetime(2026, 3, 15, 8, 30, 15, 500000)
    assert t.day_of_week == 7
    assert t.adjust_reasons == (AdjustReason.MANUAL_TIME_UPDATE,)
    assert encode_current_time(t.exact_time, 0x01) == h(CT)


def test_current_time_unknown_weekday_and_malformed() -> None:
    assert decode_current_time(h("EA07 03 0F 08 1E 0F 00 00 00")).day_of_week is None
    with pytest.raises(MalformedPayload, match="day of week"):
        decode_current_time(h("EA07 03 0F 08 1E 0F 08 00 00"))
    with pytest.raises(MalformedPayload, match="invalid date time"):
        decode_current_time(h("EA07 0D 0F 08 1E 0F 07 00 00"))
    payload = h(CT)
    for cut in range(len(payload)):
        with pytest.raises(MalformedPayload):
            decode_current_time(payload[:cut])
    with pytest.raises(MalformedPayload, match="trailing"):
        decode_current_time(payload + b"\x00")


@given(datetimes.map(lambda d: d.replace(year=max(d.year, 1582))), st.integers(0, 255))
def test_current_time_round_trip(when: datetime, fractions: int) -> None:
    exact = when.replace(microsecond=round(fractions * 1_000_000 / 256))
    t = decode_current_time(encode_current_time(exact))
    assert t.exact_time == exact
    assert t.day_of_week == exact.isoweekday()


def test_battery_level() -> None:
    assert decode_battery_level(b"\x64") == 100
    assert decode_battery_level(b"\x00") == 0
    for bad in (b"", b"\x65", b"\x50\x00"):
        with pytest.raises(MalformedPayload):
            decode_battery_level(bad)


def test_utf8_string() -> None:
    assert decode_utf8_string("model_number", b"GM-100\x00\x00") == "GM-100"
    assert decode_utf8_string("manufacturer_name", "Åcme".encode()) == "Åcme"
    with pytest.raises(MalformedPayload, match="UTF-8"):
        decode_utf8_string("serial_number", b"\xff\xfe")
