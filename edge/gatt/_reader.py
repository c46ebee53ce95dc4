"""A bounds-checked little-endian reader that turns every short read into MalformedPayload, and
the Date Time (0x2A08) encoder that mirrors :meth:`Reader.date_time`."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from edge.errors import MalformedPayload
from edge.gatt.sfloat import SfloatSpecial, decode_sfloat


def as_bytes(characteristic: str, data: bytes | bytearray | memoryview) -> bytes:
    """``data`` as immutable bytes; anything that is not a byte buffer is malformed."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise MalformedPayload(characteristic, "payload is not a byte string")


class Reader:
    """Reads fields in order; :meth:`finish` rejects trailing octets."""

    __slots__ = ("_characteristic", "_data", "_pos")

    def __init__(self, characteristic: str, data: bytes | bytearray | memoryview) -> None:
        self._characteristic = characteristic
        self._data = as_bytes(characteristic, data)
        self._pos = 0

    @property
    def characteristic(self) -> str:
        return self._characteristic

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def malformed(self, why: str) -> MalformedPayload:
        """The error to raise for this payload."""
        return MalformedPayload(self._characteristic, why)

    def take(self, n: int, what: str) -> bytes:
        if self.remaining < n:
            raise self.malformed(f"truncated in {what} at octet {self._pos}")
        chunk = self._data[self._pos : self._pos + n]
        self._pos += n
        return chunk

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "little")

    def s16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "little", signed=True)

    def sfloat(self, what: str) -> Decimal | SfloatSpecial:
        return decode_sfloat(self.u16(what))

    def sfloat_number(self, what: str) -> Decimal:
        """An SFLOAT where a number is mandatory: special values are malformed."""
        value = self.sfloat(what)
        if isinstance(value, SfloatSpecial):
            raise self.malformed(f"{what} is an SFLOAT special value ({value.value})")
        return value

    def date_time(self, what: str) -> datetime:
        """A Date Time (0x2A08): year, month, day, hours, minutes, seconds; all must be known."""
        year = self.u16(what)
        month, day, hours, minutes, seconds = (self.u8(what) for _ in range(5))
        if not 1582 <= year <= 9999:
            raise self.malformed(f"invalid {what}: year out of range")
        try:
            return datetime(year, month, day, hours, minutes, seconds)
        except ValueError:
            raise self.malformed(f"invalid {what}: not a calendar date and time") from None

    def finish(self) -> None:
        """Reject trailing octets."""
        if self.remaining:
            raise self.malformed(f"{self.remaining} trailing octet(s) at octet {self._pos}")


def encode_date_time(dt: datetime) -> bytes:
    """A Date Time (0x2A08) field: year, month, day, hours, minutes, seconds."""
    return dt.year.to_bytes(2, "little") + bytes(
        [dt.month, dt.day, dt.hour, dt.minute, dt.second]
    )
