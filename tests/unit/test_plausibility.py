"""edge.intake.plausibility: stable reasons, HI/LO exemption, control solution, value-free
messages."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.errors import Implausible, Rejected
from edge.intake import plausibility
from tests.unit.test_fhir import glucose, hr


@pytest.mark.parametrize("bpm", [20, 21, 72, 299, 300])
def test_heart_rate_in_range_passes(bpm: int) -> None:
    plausibility.check(hr(bpm))


@pytest.mark.parametrize("bpm", [0, 19, 301, 1000, 65535])
def test_heart_rate_out_of_range_is_refused_without_the_value(bpm: int) -> None:
    with pytest.raises(Implausible) as exc:
        plausibility.check(hr(bpm))
    assert exc.value.reason == "heart_rate_out_of_range"
    assert isinstance(exc.value, Rejected)
    # the message is the same whatever the value, so it cannot carry it
    with pytest.raises(Implausible) as other:
        plausibility.check(hr(12345))
    assert str(exc.value) == str(other.value)
    assert "12345" not in str(other.value)


@pytest.mark.parametrize(
    ("concentration", "unit"),
    [
        (Decimal("0.00010"), "kg/L"),  # 10 mg/dL
        (Decimal("0.006"), "kg/L"),  # 600 mg/dL
        (Decimal("0.00095"), "kg/L"),
        (Decimal("0.0006"), "mol/L"),  # 0.6 mmol/L = 10.8 mg/dL
        (Decimal("0.0333"), "mol/L"),  # 33.3 mmol/L = 599.9 mg/dL
    ],
)
def test_glucose_in_range_passes(concentration: Decimal, unit: str) -> None:
    plausibility.check(glucose(concentration, unit))


@pytest.mark.parametrize(
    ("concentration", "unit", "shown"),
    [
        (Decimal("0.00009"), "kg/L", "9"),
        (Decimal("0.00601"), "kg/L", "601"),
        (Decimal("0.0005"), "mol/L", "0.5"),
        (Decimal("0.0340"), "mol/L", "34"),
        (Decimal("0"), "kg/L", "0"),
    ],
)
def test_glucose_out_of_range_is_refused_without_the_value(
    concentration: Decimal, unit: str, shown: str
) -> None:
    with pytest.raises(Implausible) as exc:
        plausibility.check(glucose(concentration, unit))
    assert exc.value.reason == "glucose_out_of_range"
    with pytest.raises(Implausible) as other:
        plausibility.check(glucose(Decimal("0.0987654"), "kg/L"))
    assert str(exc.value) == str(other.value)
    assert "9876" not in str(other.value)
    assert shown not in str(exc.value).replace("10-600", "")


def test_glucose_range_uses_mg_dl_when_it_is_missing() -> None:
    r = glucose(Decimal("0.00601"), "kg/L", mg_dl=None)
    with pytest.raises(Implausible):
        plausibility.check(r)
    plausibility.check(glucose(Decimal("0.00100"), "kg/L", mg_dl=None))


@pytest.mark.parametrize(
    ("concentration", "status"),
    [
        (Decimal("0.00601"), "result_too_high"),
        (Decimal("0.00009"), "result_too_low"),
        (Decimal("0.0700"), "result_too_high"),
    ],
)
def test_hi_lo_status_makes_an_out_of_range_value_a_real_reading(
    concentration: Decimal, status: str
) -> None:
    plausibility.check(glucose(concentration, status=(status, "battery_low")))


def test_other_status_bits_do_not_exempt() -> None:
    with pytest.raises(Implausible):
        plausibility.check(glucose(Decimal("0.00601"), status=("battery_low",)))


@pytest.mark.parametrize("special", ["nan", "nres", "+inf", "-inf", "reserved"])
def test_special_values_pass_for_data_absent_reason(special: str) -> None:
    plausibility.check(glucose(None, special=special))


@pytest.mark.parametrize(
    ("sample_type", "location"),
    [("control_solution", "finger"), ("capillary_whole_blood", "control_solution"),
     ("control_solution", "control_solution"), (None, "control_solution")],
)
def test_control_solution_is_not_patient_data(sample_type: str | None, location: str) -> None:
    r = glucose(Decimal("0.00095"), sample_type=sample_type, sample_location=location)
    with pytest.raises(Implausible) as exc:
        plausibility.check(r)
    assert exc.value.reason == "control_solution"


def test_control_solution_wins_over_hi_status_and_special_values() -> None:
    for r in (
        glucose(Decimal("0.007"), sample_type="control_solution", status=("result_too_high",)),
        glucose(None, special="nan", sample_location="control_solution"),
    ):
        with pytest.raises(Implausible) as exc:
            plausibility.check(r)
        assert exc.value.reason == "control_solution"


def test_refusal_reasons_list_every_reason_once() -> None:
    reasons = plausibility.REFUSAL_REASONS
    assert len(set(reasons)) == len(reasons)
    assert set(reasons) == {
        "malformed", "heart_rate_out_of_range", "glucose_out_of_range", "control_solution",
        "no_consent", "vault_full_count", "vault_full_bytes", "disk_full", "unknown_device",
        "implausible_time", "rate_limited", "unknown_time",
    }


@given(st.integers(0, 65535))
def test_heart_rate_property(bpm: int) -> None:
    ok = 20 <= bpm <= 300
    try:
        plausibility.check(hr(bpm))
    except Implausible as exc:
        assert not ok
        assert exc.reason in plausibility.REFUSAL_REASONS
    else:
        assert ok


@given(st.integers(-2045, 2044), st.integers(-8, -2))
def test_glucose_property_kg_per_litre(mantissa: int, exponent: int) -> None:
    conc = Decimal(mantissa).scaleb(exponent)
    mg_dl = conc.scaleb(5)
    try:
        plausibility.check(glucose(conc, "kg/L"))
    except Implausible as exc:
        assert exc.reason == "glucose_out_of_range"
        assert not 10 <= mg_dl <= 600
    else:
        assert 10 <= mg_dl <= 600
