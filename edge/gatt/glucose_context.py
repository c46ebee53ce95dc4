"""Glucose Measurement Context 0x2A34: what the meter knows about the sample (meal, tester,
health, exercise, medication, HbA1c). The extended flags octet comes right after the sequence
number (see shared/reference/ble-profiles.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from edge.gatt._reader import Reader
from edge.gatt.sfloat import sfloat_bytes

GMC = "glucose_context"


class Carbohydrate(StrEnum):
    """Carbohydrate ID (codes 1-7)."""

    BREAKFAST = "breakfast"
    LUNCH = "lunch"
    DINNER = "dinner"
    SNACK = "snack"
    DRINK = "drink"
    SUPPER = "supper"
    BRUNCH = "brunch"


class Meal(StrEnum):
    """Meal (codes 1-5)."""

    PREPRANDIAL = "preprandial"
    POSTPRANDIAL = "postprandial"
    FASTING = "fasting"
    CASUAL = "casual"
    BEDTIME = "bedtime"


class Tester(StrEnum):
    """Tester, low nibble (1-3, 15)."""

    SELF = "self"
    HEALTH_CARE_PROFESSIONAL = "health_care_professional"
    LAB_TEST = "lab_test"
    NOT_AVAILABLE = "not_available"


class Health(StrEnum):
    """Health, high nibble (1-5, 15)."""

    MINOR_HEALTH_ISSUES = "minor_health_issues"
    MAJOR_HEALTH_ISSUES = "major_health_issues"
    DURING_MENSES = "during_menses"
    UNDER_STRESS = "under_stress"
    NO_HEALTH_ISSUES = "no_health_issues"
    NOT_AVAILABLE = "not_available"


class Medication(StrEnum):
    """Medication ID (codes 1-5)."""

    RAPID_ACTING_INSULIN = "rapid_acting_insulin"
    SHORT_ACTING_INSULIN = "short_acting_insulin"
    INTERMEDIATE_ACTING_INSULIN = "intermediate_acting_insulin"
    LONG_ACTING_INSULIN = "long_acting_insulin"
    PRE_MIXED_INSULIN = "pre_mixed_insulin"


class MedicationUnit(StrEnum):
    """Medication units (flags bit 5)."""

    KILOGRAMS = "kg"
    LITRES = "L"


def _codes(enum: type[StrEnum], not_available_last: bool = False) -> dict[int, StrEnum]:
    members = list(enum)
    table: dict[int, StrEnum] = {i + 1: m for i, m in enumerate(members)}
    if not_available_last:
        del table[len(members)]
        table[15] = members[-1]
    return table


_CARB_BY_CODE = _codes(Carbohydrate)
_MEAL_BY_CODE = _codes(Meal)
_TESTER_BY_CODE = _codes(Tester, not_available_last=True)
_HEALTH_BY_CODE = _codes(Health, not_available_last=True)
_MEDICATION_BY_CODE = _codes(Medication)


def _code_of(table: dict[int, StrEnum], member: StrEnum) -> int:
    return next(code for code, m in table.items() if m is member)


_CTX_CARB = 0x01
_CTX_MEAL = 0x02
_CTX_TESTER_HEALTH = 0x04
_CTX_EXERCISE = 0x08
_CTX_MEDICATION = 0x10
_CTX_MEDICATION_LITRES = 0x20
_CTX_HBA1C = 0x40
_CTX_EXTENDED = 0x80


@dataclass(frozen=True, slots=True)
class GlucoseContext:
    """A decoded Glucose Measurement Context notification."""

    sequence_number: int
    extended_flags: int | None = None
    carbohydrate_id: Carbohydrate | None = None
    carbohydrate_kg: Decimal | None = None
    meal: Meal | None = None
    tester: Tester | None = None
    health: Health | None = None
    exercise_duration_s: int | None = None
    exercise_intensity_percent: int | None = None
    medication_id: Medication | None = None
    medication: Decimal | None = None
    medication_unit: MedicationUnit | None = None
    hba1c_percent: Decimal | None = None


def _lookup(r: Reader, table: dict[int, StrEnum], code: int, what: str) -> StrEnum:
    try:
        return table[code]
    except KeyError:
        raise r.malformed(f"reserved {what} {code}") from None


def decode_glucose_context(data: bytes | bytearray | memoryview) -> GlucoseContext:
    """Decode 0x2A34. Special SFLOAT values are refused: every context number is mandatory."""
    r = Reader(GMC, data)
    flags = r.u8("flags")
    seq = r.u16("sequence number")
    extended = r.u8("extended flags") if flags & _CTX_EXTENDED else None
    values: dict[str, object] = {}
    if flags & _CTX_CARB:
        values["carbohydrate_id"] = _lookup(r, _CARB_BY_CODE, r.u8("carbohydrate id"),
                                            "carbohydrate id")
        values["carbohydrate_kg"] = r.sfloat_number("carbohydrate")
    if flags & _CTX_MEAL:
        values["meal"] = _lookup(r, _MEAL_BY_CODE, r.u8("meal"), "meal")
    if flags & _CTX_TESTER_HEALTH:
        octet = r.u8("tester and health")
        values["tester"] = _lookup(r, _TESTER_BY_CODE, octet & 0x0F, "tester")
        values["health"] = _lookup(r, _HEALTH_BY_CODE, octet >> 4, "health")
    if flags & _CTX_EXERCISE:
        values["exercise_duration_s"] = r.u16("exercise duration")
        intensity = r.u8("exercise intensity")
        if intensity > 100:
            raise r.malformed("exercise intensity above 100 percent")
        values["exercise_intensity_percent"] = intensity
    if flags & _CTX_MEDICATION:
        values["medication_id"] = _lookup(r, _MEDICATION_BY_CODE, r.u8("medication id"),
                                          "medication id")
        values["medication"] = r.sfloat_number("medication")
        values["medication_unit"] = (
            MedicationUnit.LITRES if flags & _CTX_MEDICATION_LITRES else MedicationUnit.KILOGRAMS
        )
    if flags & _CTX_HBA1C:
        values["hba1c_percent"] = r.sfloat_number("HbA1c")
    r.finish()
    return GlucoseContext(
        sequence_number=seq,
        extended_flags=extended,
        **values,  # type: ignore[arg-type]
    )


def encode_glucose_context(c: GlucoseContext) -> bytes:
    """The 0x2A34 payload for ``c`` (for tests and round trips)."""
    flags = 0
    body = bytearray(c.sequence_number.to_bytes(2, "little"))
    if c.extended_flags is not None:
        flags |= _CTX_EXTENDED
        body.append(c.extended_flags)
    if c.carbohydrate_id is not None and c.carbohydrate_kg is not None:
        flags |= _CTX_CARB
        body.append(_code_of(_CARB_BY_CODE, c.carbohydrate_id))
        body += sfloat_bytes(c.carbohydrate_kg)
    if c.meal is not None:
        flags |= _CTX_MEAL
        body.append(_code_of(_MEAL_BY_CODE, c.meal))
    if c.tester is not None or c.health is not None:
        flags |= _CTX_TESTER_HEALTH
        tester = _code_of(_TESTER_BY_CODE, c.tester or Tester.NOT_AVAILABLE)
        health = _code_of(_HEALTH_BY_CODE, c.health or Health.NOT_AVAILABLE)
        body.append(health << 4 | tester)
    if c.exercise_duration_s is not None:
        flags |= _CTX_EXERCISE
        body += c.exercise_duration_s.to_bytes(2, "little")
        body.append(c.exercise_intensity_percent or 0)
    if c.medication_id is not None and c.medication is not None:
        flags |= _CTX_MEDICATION
        if c.medication_unit is MedicationUnit.LITRES:
            flags |= _CTX_MEDICATION_LITRES
        body.append(_code_of(_MEDICATION_BY_CODE, c.medication_id))
        body += sfloat_bytes(c.medication)
    if c.hba1c_percent is not None:
        flags |= _CTX_HBA1C
        body += sfloat_bytes(c.hba1c_percent)
    return bytes([flags]) + bytes(body)
