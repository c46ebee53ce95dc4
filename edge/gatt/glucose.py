"""Glucose Measurement 0x2A18 (Glucose Service 0x1808); the context 0x2A34 is in
:mod:`edge.gatt.glucose_context`, the feature 0x2A51 in :mod:`edge.gatt.glucose_feature`.

Traps handled on purpose (see shared/reference/ble-profiles.md): the time offset is a *signed*
sint16; status bit 5 is "result higher than the device can process" and bit 6 "lower"; the
context's extended flags octet comes right after the sequence number; units convert with
18.0156 mg/dL per mmol/L.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from enum import StrEnum

from edge.gatt._reader import Reader, encode_date_time
from edge.gatt.sfloat import SfloatSpecial, sfloat_bytes

GM = "glucose_measurement"

#: mg/dL per mmol/L (molar mass of glucose 180.156 g/mol)
MG_DL_PER_MMOL_L = Decimal("18.0156")
_MMOL_QUANTUM = Decimal("0.01")
_MG_QUANTUM = Decimal("0.1")


class GlucoseUnit(StrEnum):
    """Concentration unit on the wire (flags bit 2)."""

    KG_PER_L = "kg/L"
    MOL_PER_L = "mol/L"


class SampleType(StrEnum):
    """Type, low nibble of the type/location octet (codes 1-10)."""

    CAPILLARY_WHOLE_BLOOD = "capillary_whole_blood"
    CAPILLARY_PLASMA = "capillary_plasma"
    VENOUS_WHOLE_BLOOD = "venous_whole_blood"
    VENOUS_PLASMA = "venous_plasma"
    ARTERIAL_WHOLE_BLOOD = "arterial_whole_blood"
    ARTERIAL_PLASMA = "arterial_plasma"
    UNDETERMINED_WHOLE_BLOOD = "undetermined_whole_blood"
    UNDETERMINED_PLASMA = "undetermined_plasma"
    INTERSTITIAL_FLUID = "interstitial_fluid"
    CONTROL_SOLUTION = "control_solution"


class SampleLocation(StrEnum):
    """Sample location, high nibble of the type/location octet."""

    FINGER = "finger"
    ALTERNATE_SITE = "alternate_site"
    EARLOBE = "earlobe"
    CONTROL_SOLUTION = "control_solution"
    NOT_AVAILABLE = "not_available"


class GlucoseStatus(StrEnum):
    """Sensor status annunciation, in bit order (bit 0 first)."""

    BATTERY_LOW = "battery_low"
    SENSOR_MALFUNCTION = "sensor_malfunction"
    SAMPLE_SIZE_INSUFFICIENT = "sample_size_insufficient"
    STRIP_INSERTION_ERROR = "strip_insertion_error"
    STRIP_TYPE_INCORRECT = "strip_type_incorrect"
    #: bit 5: result HIGHER than the device can process
    RESULT_TOO_HIGH = "result_too_high"
    #: bit 6: result LOWER than the device can process
    RESULT_TOO_LOW = "result_too_low"
    TEMPERATURE_TOO_HIGH = "temperature_too_high"
    TEMPERATURE_TOO_LOW = "temperature_too_low"
    STRIP_PULLED_TOO_SOON = "strip_pulled_too_soon"
    DEVICE_FAULT = "device_fault"
    TIME_FAULT = "time_fault"

    @property
    def bit(self) -> int:
        """The annunciation bit number."""
        return _STATUS_ORDER.index(self)


_STATUS_ORDER: tuple[GlucoseStatus, ...] = tuple(GlucoseStatus)
_TYPE_BY_CODE: dict[int, SampleType] = {i + 1: t for i, t in enumerate(SampleType)}
_TYPE_CODE = {t: c for c, t in _TYPE_BY_CODE.items()}
_LOCATION_BY_CODE: dict[int, SampleLocation] = {
    1: SampleLocation.FINGER,
    2: SampleLocation.ALTERNATE_SITE,
    3: SampleLocation.EARLOBE,
    4: SampleLocation.CONTROL_SOLUTION,
    15: SampleLocation.NOT_AVAILABLE,
}
_LOCATION_CODE = {v: k for k, v in _LOCATION_BY_CODE.items()}

_GM_TIME_OFFSET = 0x01
_GM_CONCENTRATION = 0x02
_GM_MOL_PER_L = 0x04
_GM_STATUS = 0x08
_GM_CONTEXT_FOLLOWS = 0x10


def status_from_bits(bits: int) -> tuple[GlucoseStatus, ...]:
    """The named status bits set in an annunciation word (reserved bits 12-15 ignored)."""
    return tuple(s for i, s in enumerate(_STATUS_ORDER) if bits >> i & 1)


def status_to_bits(status: tuple[GlucoseStatus, ...] | frozenset[GlucoseStatus]) -> int:
    """The annunciation word with the given status bits set."""
    return sum(1 << s.bit for s in set(status))


@dataclass(frozen=True, slots=True)
class GlucoseMeasurement:
    """A decoded Glucose Measurement notification."""

    sequence_number: int
    #: device local time, no zone
    base_time: datetime
    #: minutes to add to ``base_time``; None when absent
    time_offset_min: int | None = None
    #: as on the wire, in ``unit``; None when absent or a special value
    concentration: Decimal | None = None
    concentration_special: SfloatSpecial | None = None
    unit: GlucoseUnit = GlucoseUnit.KG_PER_L
    sample_type: SampleType | None = None
    sample_location: SampleLocation | None = None
    #: None when the annunciation field is absent; () when present and clear
    status_bits: int | None = None
    context_follows: bool = False

    @property
    def has_concentration(self) -> bool:
        """Whether the concentration field (number or special) was sent."""
        return self.concentration is not None or self.concentration_special is not None

    @property
    def device_time(self) -> datetime:
        """Base time plus the time offset: when the meter says the sample was taken (local)."""
        return self.base_time + timedelta(minutes=self.time_offset_min or 0)

    @property
    def status(self) -> tuple[GlucoseStatus, ...]:
        """Named status bits, in bit order."""
        return status_from_bits(self.status_bits or 0)

    @property
    def mg_dl(self) -> Decimal | None:
        """Concentration in mg/dL: exact from kg/L; from mol/L rounded to 0.1."""
        if self.concentration is None:
            return None
        if self.unit is GlucoseUnit.KG_PER_L:
            return self.concentration.scaleb(5)
        mmol = self.concentration.scaleb(3)
        return (mmol * MG_DL_PER_MMOL_L).quantize(_MG_QUANTUM, rounding=ROUND_HALF_EVEN)

    @property
    def mmol_l(self) -> Decimal | None:
        """Concentration in mmol/L: exact from mol/L; from kg/L rounded to 0.01."""
        if self.concentration is None:
            return None
        if self.unit is GlucoseUnit.MOL_PER_L:
            return self.concentration.scaleb(3)
        mg = self.concentration.scaleb(5)
        return (mg / MG_DL_PER_MMOL_L).quantize(_MMOL_QUANTUM, rounding=ROUND_HALF_EVEN)


def decode_glucose_measurement(data: bytes | bytearray | memoryview) -> GlucoseMeasurement:
    """Decode 0x2A18. Reserved flag bits 5-7 and status bits 12-15 are ignored."""
    r = Reader(GM, data)
    flags = r.u8("flags")
    seq = r.u16("sequence number")
    base_time = r.date_time("base time")
    offset = r.s16("time offset") if flags & _GM_TIME_OFFSET else None
    concentration: Decimal | None = None
    special: SfloatSpecial | None = None
    sample_type: SampleType | None = None
    location: SampleLocation | None = None
    if flags & _GM_CONCENTRATION:
        value = r.sfloat("concentration")
        if isinstance(value, SfloatSpecial):
            special = value
        else:
            concentration = value
        type_location = r.u8("type and sample location")
        try:
            sample_type = _TYPE_BY_CODE[type_location & 0x0F]
        except KeyError:
            raise r.malformed(f"reserved sample type {type_location & 0x0F}") from None
        try:
            location = _LOCATION_BY_CODE[type_location >> 4]
        except KeyError:
            raise r.malformed(f"reserved sample location {type_location >> 4}") from None
    status = r.u16("sensor status annunciation") if flags & _GM_STATUS else None
    r.finish()
    m = GlucoseMeasurement(
        sequence_number=seq,
        base_time=base_time,
        time_offset_min=offset,
        concentration=concentration,
        concentration_special=special,
        unit=GlucoseUnit.MOL_PER_L if flags & _GM_MOL_PER_L else GlucoseUnit.KG_PER_L,
        sample_type=sample_type,
        sample_location=location,
        status_bits=status,
        context_follows=bool(flags & _GM_CONTEXT_FOLLOWS),
    )
    try:
        m.device_time  # noqa: B018 - an offset that leaves the calendar is malformed
    except OverflowError:
        raise r.malformed("time offset leaves the calendar") from None
    return m


def encode_glucose_measurement(m: GlucoseMeasurement) -> bytes:
    """The 0x2A18 payload for ``m`` (for tests and round trips)."""
    flags = 0
    body = bytearray(m.sequence_number.to_bytes(2, "little") + encode_date_time(m.base_time))
    if m.time_offset_min is not None:
        flags |= _GM_TIME_OFFSET
        body += m.time_offset_min.to_bytes(2, "little", signed=True)
    if m.unit is GlucoseUnit.MOL_PER_L:
        flags |= _GM_MOL_PER_L
    if m.has_concentration:
        flags |= _GM_CONCENTRATION
        value = m.concentration_special if m.concentration is None else m.concentration
        assert value is not None
        body += sfloat_bytes(value)
        t = _TYPE_CODE[m.sample_type] if m.sample_type else 0
        loc = _LOCATION_CODE[m.sample_location] if m.sample_location else 0
        body.append(loc << 4 | t)
    if m.status_bits is not None:
        flags |= _GM_STATUS
        body += m.status_bits.to_bytes(2, "little")
    if m.context_follows:
        flags |= _GM_CONTEXT_FOLLOWS
    return bytes([flags]) + bytes(body)
