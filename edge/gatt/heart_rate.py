"""Heart Rate Service 0x180D: Heart Rate Measurement 0x2A37, Body Sensor Location 0x2A38 and
the Heart Rate Control Point 0x2A39."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import IntEnum, StrEnum

from edge.gatt._reader import Reader

HRM = "heart_rate_measurement"
BSL = "body_sensor_location"
HRCP = "heart_rate_control_point"

_FLAG_UINT16 = 0x01
_FLAG_ENERGY = 0x08
_FLAG_RR = 0x10
_RR_UNIT = Decimal(1024)


class SensorContact(StrEnum):
    """Flags bits 1-2 read as one 2-bit field: 0/1 not supported, 2 not detected, 3 detected."""

    NOT_SUPPORTED = "not_supported"
    NOT_DETECTED = "not_detected"
    DETECTED = "detected"

    @classmethod
    def from_flags(cls, flags: int) -> SensorContact:
        """Bit 2 = contact supported, bit 1 = contact detected (not the other way round)."""
        field = (flags >> 1) & 0b11
        if field == 0b11:
            return cls.DETECTED
        if field == 0b10:
            return cls.NOT_DETECTED
        return cls.NOT_SUPPORTED

    @property
    def flag_bits(self) -> int:
        """The flags bits 1-2 that encode this state."""
        return {"not_supported": 0b000, "not_detected": 0b100, "detected": 0b110}[self.value]


@dataclass(frozen=True, slots=True)
class HeartRateMeasurement:
    """A decoded Heart Rate Measurement notification."""

    heart_rate_bpm: int
    sensor_contact: SensorContact
    #: kJ since the last reset; None when the field is absent
    energy_expended_kj: int | None = None
    #: RR intervals in units of 1/1024 s, oldest first
    rr_intervals_raw: tuple[int, ...] = ()
    #: True when the heart rate was sent as uint16
    uint16_format: bool = False

    @property
    def rr_intervals_s(self) -> tuple[Decimal, ...]:
        """RR intervals in seconds (raw / 1024, exact)."""
        return tuple(Decimal(raw) / _RR_UNIT for raw in self.rr_intervals_raw)


def decode_heart_rate_measurement(data: bytes | bytearray | memoryview) -> HeartRateMeasurement:
    """Decode 0x2A37. Reserved flag bits 5-7 are ignored."""
    r = Reader(HRM, data)
    flags = r.u8("flags")
    uint16 = bool(flags & _FLAG_UINT16)
    bpm = r.u16("heart rate") if uint16 else r.u8("heart rate")
    energy = r.u16("energy expended") if flags & _FLAG_ENERGY else None
    rr: tuple[int, ...] = ()
    if flags & _FLAG_RR:
        if r.remaining == 0:
            raise r.malformed("RR-interval flag set but no RR interval present")
        if r.remaining % 2:
            raise r.malformed("odd number of octets in the RR-interval area")
        rr = tuple(r.u16("RR interval") for _ in range(r.remaining // 2))
    r.finish()
    return HeartRateMeasurement(
        heart_rate_bpm=bpm,
        sensor_contact=SensorContact.from_flags(flags),
        energy_expended_kj=energy,
        rr_intervals_raw=rr,
        uint16_format=uint16,
    )


def encode_heart_rate_measurement(m: HeartRateMeasurement) -> bytes:
    """The 0x2A37 payload for ``m`` (uint16 format when asked for or when bpm > 255)."""
    uint16 = m.uint16_format or m.heart_rate_bpm > 0xFF
    flags = m.sensor_contact.flag_bits
    out = bytearray()
    if uint16:
        flags |= _FLAG_UINT16
        out += m.heart_rate_bpm.to_bytes(2, "little")
    else:
        out.append(m.heart_rate_bpm)
    if m.energy_expended_kj is not None:
        flags |= _FLAG_ENERGY
        out += m.energy_expended_kj.to_bytes(2, "little")
    if m.rr_intervals_raw:
        flags |= _FLAG_RR
        for rr in m.rr_intervals_raw:
            out += rr.to_bytes(2, "little")
    return bytes([flags]) + bytes(out)


class BodySensorLocation(StrEnum):
    """Body Sensor Location 0x2A38 values."""

    OTHER = "other"
    CHEST = "chest"
    WRIST = "wrist"
    FINGER = "finger"
    HAND = "hand"
    EAR_LOBE = "ear_lobe"
    FOOT = "foot"


_BSL_BY_CODE = dict(enumerate(BodySensorLocation))
_BSL_CODE = {v: k for k, v in _BSL_BY_CODE.items()}


def decode_body_sensor_location(data: bytes | bytearray | memoryview) -> BodySensorLocation:
    """Decode 0x2A38 (one octet; values 7-255 are reserved and refused)."""
    r = Reader(BSL, data)
    code = r.u8("location")
    r.finish()
    try:
        return _BSL_BY_CODE[code]
    except KeyError:
        raise r.malformed(f"reserved body sensor location {code}") from None


def encode_body_sensor_location(location: BodySensorLocation) -> bytes:
    """The 0x2A38 payload."""
    return bytes([_BSL_CODE[location]])


class HeartRateControlOpcode(IntEnum):
    """Heart Rate Control Point 0x2A39 opcodes (only one is defined)."""

    RESET_ENERGY_EXPENDED = 0x01


def encode_reset_energy_expended() -> bytes:
    """The 0x2A39 write that resets the energy expended counter."""
    return bytes([HeartRateControlOpcode.RESET_ENERGY_EXPENDED])


def decode_heart_rate_control_point(
    data: bytes | bytearray | memoryview,
) -> HeartRateControlOpcode:
    """Decode a 0x2A39 value (what a client wrote)."""
    r = Reader(HRCP, data)
    code = r.u8("opcode")
    r.finish()
    try:
        return HeartRateControlOpcode(code)
    except ValueError:
        raise r.malformed(f"unsupported control point value {code}") from None
