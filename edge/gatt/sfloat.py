"""IEEE 11073-20601 16-bit SFLOAT: 4-bit exponent, 12-bit mantissa, both two's complement.

Decoded to :class:`decimal.Decimal` so a device's precision survives (``5.50`` stays ``5.50``).
Special values are recognised by the whole raw word only; ``0x0FFF`` is -1, not NaN.
"""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum


class SfloatSpecial(StrEnum):
    """The SFLOAT special values (names as in the ``edge decode`` JSON)."""

    NAN = "nan"
    NRES = "nres"
    PLUS_INF = "+inf"
    MINUS_INF = "-inf"
    RESERVED = "reserved"


SPECIAL_WORDS: dict[int, SfloatSpecial] = {
    0x07FF: SfloatSpecial.NAN,
    0x0800: SfloatSpecial.NRES,
    0x07FE: SfloatSpecial.PLUS_INF,
    0x0802: SfloatSpecial.MINUS_INF,
    0x0801: SfloatSpecial.RESERVED,
}
_WORD_OF_SPECIAL = {v: k for k, v in SPECIAL_WORDS.items()}

MANTISSA_MIN, MANTISSA_MAX = -2048, 2047
EXPONENT_MIN, EXPONENT_MAX = -8, 7


def decode_sfloat(word: int) -> Decimal | SfloatSpecial:
    """The value of a raw 16-bit SFLOAT word: ``mantissa × 10^exponent`` or a special."""
    word &= 0xFFFF
    special = SPECIAL_WORDS.get(word)
    if special is not None:
        return special
    mantissa = word & 0x0FFF
    if mantissa >= 0x0800:
        mantissa -= 0x1000
    exponent = word >> 12
    if exponent >= 0x8:
        exponent -= 0x10
    if exponent >= 0:
        # A positive exponent carries no fractional digits: print 500, not 5E+2.
        return Decimal(mantissa * 10**exponent)
    return Decimal(mantissa).scaleb(exponent)


def encode_sfloat(value: Decimal | SfloatSpecial | int) -> int:
    """The raw word for ``value``; raises ValueError when it has no exact SFLOAT form.

    The exponent is the value's own (``Decimal("5.50")`` -> mantissa 550, exponent -2), moved
    only as far as needed to fit, and only where that is exact.
    """
    if isinstance(value, SfloatSpecial):
        return _WORD_OF_SPECIAL[value]
    dec = Decimal(value)
    if not dec.is_finite():
        raise ValueError("not a finite number")
    sign, digits, raw_exp = dec.as_tuple()
    assert isinstance(raw_exp, int)
    exp: int = raw_exp
    mantissa = int("".join(map(str, digits)) or "0")
    if sign:
        mantissa = -mantissa
    if mantissa == 0:
        exp = min(max(exp, EXPONENT_MIN), EXPONENT_MAX)
    # Too many digits or too small an exponent: drop trailing zeros (exact only).
    while mantissa and mantissa % 10 == 0 and (
        exp < EXPONENT_MIN or not MANTISSA_MIN <= mantissa <= MANTISSA_MAX
    ):
        mantissa //= 10
        exp += 1
    # Too large an exponent: scale the mantissa up while it fits.
    while exp > EXPONENT_MAX and MANTISSA_MIN <= mantissa * 10 <= MANTISSA_MAX:
        mantissa *= 10
        exp -= 1
    if not (EXPONENT_MIN <= exp <= EXPONENT_MAX and MANTISSA_MIN <= mantissa <= MANTISSA_MAX):
        raise ValueError("value has no exact SFLOAT representation")
    word = ((exp & 0xF) << 12) | (mantissa & 0x0FFF)
    if word in SPECIAL_WORDS:
        raise ValueError("value collides with an SFLOAT special word")
    return word


def sfloat_bytes(value: Decimal | SfloatSpecial | int) -> bytes:
    """:func:`encode_sfloat` as two little-endian octets."""
    return encode_sfloat(value).to_bytes(2, "little")
