"""The simulator's own encoders for every characteristic it serves.

Written from the Bluetooth SIG profiles (see the project's ble-profiles reference), independently
of the gateway's codecs, so tests between the two sides mean something. All multi-octet fields
are little-endian. Pure functions: values in, bytes out.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from firmware_sim.errors import SimError

# IEEE 11073 SFLOAT special values (the whole 16-bit word)
SFLOAT_NAN = 0x07FF
SFLOAT_NRES = 0x0800
SFLOAT_POS_INFINITY = 0x07FE
SFLOAT_NEG_INFINITY = 0x0802
SFLOAT_RESERVED = 0x0801

_MANTISSA_MAX = 2045  # 2046/2047 and -2046..-2048 collide with the special values


class EncodeError(SimError, ValueError):
    """A value cannot be represented in the characteristic's format."""


def sfloat(value: Decimal | int | str) -> int:
    """The raw 16-bit SFLOAT word of ``value`` (exponent in the top 4 bits, mantissa in the low
    12, both two's complement). Keeps the decimal precision when it fits; otherwise rounds."""
    d = Decimal(value)
    if not d.is_finite():
        raise EncodeError("SFLOAT: use the special constants for NaN / infinities")
    sign, digits, exp = d.as_tuple()
    assert isinstance(exp, int)
    mantissa = int("".join(map(str, digits)) or "0")
    # drop trailing zeros while the exponent allows, to stay within range
    while mantissa > _MANTISSA_MAX and mantissa % 10 == 0:
        mantissa //= 10
        exp += 1
    while mantissa > _MANTISSA_MAX:
        mantissa = (mantissa + 5) // 10  # round half up, losing one digit
        exp += 1
    while exp > 7 and mantissa * 10 <= _MANTISSA_MAX:
        mantissa *= 10
        exp -= 1
    while exp < -8:
        if mantissa == 0:
            exp = 0
            break
        mantissa = (mantissa + 5) // 10
        exp += 1
    if exp > 7 or exp < -8:
        raise EncodeError(f"SFLOAT: {value} out of range")
    if sign:
        mantissa = -mantissa
    return ((exp & 0x0F) << 12) | (mantissa & 0x0FFF)


def sfloat_bytes(value: Decimal | int | str) -> bytes:
    """``sfloat(value)`` as two little-endian octets."""
    return struct.pack("<H", sfloat(value))


# --------------------------------------------------------------------------- heart rate

HR_FLAG_UINT16 = 0x01
HR_FLAG_ENERGY = 0x08
HR_FLAG_RR = 0x10


def heart_rate_measurement(
    bpm: int,
    *,
    uint16: bool = False,
    contact: bool | None = None,
    energy_kj: int | None = None,
    rr_1024: Sequence[int] = (),
    reserved_bits: int = 0,
) -> bytes:
    """Heart Rate Measurement 0x2A37. ``contact`` None = sensor contact not supported;
    ``rr_1024`` are RR intervals in 1/1024 s, oldest first; ``reserved_bits`` (0..7) land in
    flag bits 5–7 (receivers must ignore them)."""
    flags = reserved_bits << 5 & 0xE0
    if uint16:
        flags |= HR_FLAG_UINT16
    if contact is not None:
        # bits 1-2 as a field: 2 = supported, not detected; 3 = supported and detected
        flags |= (3 if contact else 2) << 1
    if energy_kj is not None:
        flags |= HR_FLAG_ENERGY
    if rr_1024:
        flags |= HR_FLAG_RR
    out = bytearray([flags])
    if uint16:
        out += struct.pack("<H", bpm)
    else:
        if not 0 <= bpm <= 0xFF:
            raise EncodeError("heart rate does not fit uint8")
        out.append(bpm)
    if energy_kj is not None:
        out += struct.pack("<H", min(energy_kj, 0xFFFF))
    for rr in rr_1024:
        out += struct.pack("<H", rr)
    return bytes(out)


def max_rr_intervals(*, mtu: int = 23, uint16: bool = False, energy: bool = False) -> int:
    """How many RR intervals fit in one notification at this ATT MTU (payload = MTU - 3)."""
    fixed = 1 + (2 if uint16 else 1) + (2 if energy else 0)
    return max(0, (mtu - 3 - fixed) // 2)


# --------------------------------------------------------------------------- glucose

GLU_FLAG_TIME_OFFSET = 0x01
GLU_FLAG_CONCENTRATION = 0x02
GLU_FLAG_MOL_PER_L = 0x04
GLU_FLAG_STATUS = 0x08
GLU_FLAG_CONTEXT = 0x10

STATUS_RESULT_HIGH = 1 << 5
STATUS_RESULT_LOW = 1 << 6

TYPE_CAPILLARY_WHOLE_BLOOD = 1
TYPE_CAPILLARY_PLASMA = 2
TYPE_CONTROL_SOLUTION = 10
LOCATION_FINGER = 1
LOCATION_ALTERNATE_SITE = 2
LOCATION_CONTROL_SOLUTION = 4
LOCATION_NOT_AVAILABLE = 15


def date_time(t: datetime) -> bytes:
    """Date Time (7 octets): uint16 year, month, day, hours, minutes, seconds. No zone."""
    return struct.pack("<HBBBBB", t.year, t.month, t.day, t.hour, t.minute, t.second)


def concentration_si(value: Decimal, unit: str) -> Decimal:
    """A concentration in mg/dL or mmol/L as the characteristic's SI unit (kg/L or mol/L)."""
    if unit == "mg/dL":
        return value.scaleb(-5)  # 1 mg/dL = 1e-5 kg/L
    if unit == "mmol/L":
        return value.scaleb(-3)  # 1 mmol/L = 1e-3 mol/L
    raise EncodeError(f"unknown unit {unit!r}")


def glucose_measurement(
    sequence: int,
    base_time: datetime,
    *,
    time_offset: int | None = None,
    concentration: Decimal | None = None,
    unit: str = "mg/dL",
    sample_type: int = TYPE_CAPILLARY_PLASMA,
    location: int = LOCATION_FINGER,
    status: int | None = None,
    context_follows: bool = False,
    concentration_raw: int | None = None,
    reserved_bits: int = 0,
) -> bytes:
    """Glucose Measurement 0x2A18. ``concentration`` in ``unit`` (mg/dL -> kg/L flag clear,
    mmol/L -> mol/L flag set). ``concentration_raw`` overrides the SFLOAT word (NaN, NRes …).
    ``reserved_bits`` (0..7) land in flag bits 5–7."""
    flags = reserved_bits << 5 & 0xE0
    body = bytearray()
    body += struct.pack("<H", sequence & 0xFFFF)
    body += date_time(base_time)
    if time_offset is not None:
        flags |= GLU_FLAG_TIME_OFFSET
        body += struct.pack("<h", time_offset)
    if concentration is not None or concentration_raw is not None:
        flags |= GLU_FLAG_CONCENTRATION
        if unit == "mmol/L":
            flags |= GLU_FLAG_MOL_PER_L
        if concentration_raw is not None:
            raw = concentration_raw
        else:
            assert concentration is not None
            raw = sfloat(concentration_si(concentration, unit))
        body += struct.pack("<H", raw)
        body.append((location & 0x0F) << 4 | (sample_type & 0x0F))
    if status is not None:
        flags |= GLU_FLAG_STATUS
        body += struct.pack("<H", status)
    if context_follows:
        flags |= GLU_FLAG_CONTEXT
    return bytes([flags]) + bytes(body)


@dataclass(frozen=True)
class GlucoseContext:
    """The optional fields of a Glucose Measurement Context record."""

    carbohydrate_id: int | None = None
    #: grams (sent as kilograms SFLOAT)
    carbohydrate_grams: Decimal | None = None
    meal: int | None = None
    tester: int | None = None
    health: int | None = None
    exercise_seconds: int | None = None
    exercise_intensity: int | None = None
    medication_id: int | None = None
    #: milligrams (bit 5 clear: kilograms SFLOAT) or millilitres (bit 5 set: litres SFLOAT)
    medication_amount: Decimal | None = None
    medication_in_litres: bool = False
    hba1c_percent: Decimal | None = None
    extended_flags: int | None = None


def glucose_context(sequence: int, ctx: GlucoseContext) -> bytes:
    """Glucose Measurement Context 0x2A34 (order: flags, sequence, [extended flags], carb,
    meal, tester/health, exercise, medication, HbA1c)."""
    flags = 0
    body = bytearray(struct.pack("<H", sequence & 0xFFFF))
    if ctx.extended_flags is not None:
        flags |= 0x80
        body.append(ctx.extended_flags & 0xFF)
    if ctx.carbohydrate_id is not None and ctx.carbohydrate_grams is not None:
        flags |= 0x01
        body.append(ctx.carbohydrate_id)
        body += sfloat_bytes(ctx.carbohydrate_grams.scaleb(-3))
    if ctx.meal is not None:
        flags |= 0x02
        body.append(ctx.meal)
    if ctx.tester is not None or ctx.health is not None:
        flags |= 0x04
        body.append(((ctx.health or 0) & 0x0F) << 4 | ((ctx.tester or 0) & 0x0F))
    if ctx.exercise_seconds is not None:
        flags |= 0x08
        body += struct.pack("<HB", ctx.exercise_seconds, ctx.exercise_intensity or 0)
    if ctx.medication_id is not None and ctx.medication_amount is not None:
        flags |= 0x10
        if ctx.medication_in_litres:
            flags |= 0x20
        body.append(ctx.medication_id)
        # mg -> kg is 1e-6; mL -> L is 1e-3
        body += sfloat_bytes(ctx.medication_amount.scaleb(-3 if ctx.medication_in_litres else -6))
    if ctx.hba1c_percent is not None:
        flags |= 0x40
        body += sfloat_bytes(ctx.hba1c_percent)
    return bytes([flags]) + bytes(body)


# --------------------------------------------------------------------------- RACP

RACP_REPORT = 1
RACP_DELETE = 2
RACP_ABORT = 3
RACP_REPORT_NUMBER = 4
RACP_NUMBER_RESPONSE = 5
RACP_RESPONSE_CODE = 6

OP_NULL = 0
OP_ALL = 1
OP_LESS_OR_EQUAL = 2
OP_GREATER_OR_EQUAL = 3
OP_WITHIN_RANGE = 4
OP_FIRST = 5
OP_LAST = 6

RSP_SUCCESS = 1
RSP_OPCODE_NOT_SUPPORTED = 2
RSP_INVALID_OPERATOR = 3
RSP_OPERATOR_NOT_SUPPORTED = 4
RSP_INVALID_OPERAND = 5
RSP_NO_RECORDS_FOUND = 6
RSP_ABORT_UNSUCCESSFUL = 7
RSP_PROCEDURE_NOT_COMPLETED = 8
RSP_OPERAND_NOT_SUPPORTED = 9

FILTER_SEQUENCE = 1
FILTER_USER_FACING_TIME = 2


def racp_response(request_opcode: int, code: int) -> bytes:
    """``06 00 <request opcode> <response code>``."""
    return bytes([RACP_RESPONSE_CODE, OP_NULL, request_opcode & 0xFF, code & 0xFF])


def racp_number_response(count: int) -> bytes:
    """``05 00 LL HH``."""
    return bytes([RACP_NUMBER_RESPONSE, OP_NULL]) + struct.pack("<H", count & 0xFFFF)


# --------------------------------------------------------------------------- misc services


def current_time(t: datetime, *, fractions256: int = 0, adjust_reason: int = 0) -> bytes:
    """Current Time 0x2A2B (10 octets): Date Time, day of week (1 = Monday), 1/256 s, reason."""
    return date_time(t) + bytes([t.isoweekday(), fractions256 & 0xFF, adjust_reason & 0xFF])


def uint8(value: int) -> bytes:
    """One octet (battery level, body sensor location)."""
    return bytes([value & 0xFF])


def uint16(value: int) -> bytes:
    """Two octets, little-endian (Glucose Feature)."""
    return struct.pack("<H", value & 0xFFFF)


def utf8(text: str) -> bytes:
    """A UTF-8 string characteristic (Device Information), no terminator."""
    return text.encode("utf-8")
