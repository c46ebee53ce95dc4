"""IEEE 11073 SFLOAT: known words, every special by raw word, precision, round trips."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.gatt.sfloat import SfloatSpecial, decode_sfloat, encode_sfloat, sfloat_bytes


@pytest.mark.parametrize(
    ("word", "special"),
    [
        (0x07FF, SfloatSpecial.NAN),
        (0x0800, SfloatSpecial.NRES),
        (0x07FE, SfloatSpecial.PLUS_INF),
        (0x0802, SfloatSpecial.MINUS_INF),
        (0x0801, SfloatSpecial.RESERVED),
    ],
)
def test_specials_by_whole_word(word: int, special: SfloatSpecial) -> None:
    assert decode_sfloat(word) is special
    assert encode_sfloat(special) == word


@pytest.mark.parametrize(
    ("word", "text"),
    [
        (0x0FFF, "-1"),  # trap: all-ones mantissa with exponent 0 is -1, not NaN
        (0xE226, "5.50"),  # 550 x 10^-2: the trailing zero is kept
        (0xF048, "7.2"),
        (0x0048, "72"),
        (0x1005, "50"),
        (0xB05F, "0.00095"),  # 95 mg/dL written as kg/L
        (0x8001, "1E-8"),
        (0x7FFF, "-10000000"),
        (0x17FF, "20470"),  # same mantissa as NaN but exponent 1: a number
        (0x0000, "0"),
        (0xF800, "-204.8"),
        (0xE064, "1.00"),
    ],
)
def test_known_words(word: int, text: str) -> None:
    value = decode_sfloat(word)
    assert isinstance(value, Decimal)
    assert value == Decimal(text)
    assert str(value) == text or format(value, "f") == format(Decimal(text), "f")


def test_precision_is_kept_digit_for_digit() -> None:
    assert str(decode_sfloat(0xE226)) == "5.50"
    value = decode_sfloat(0xE226)
    assert isinstance(value, Decimal) and value.as_tuple() == Decimal("5.50").as_tuple()


def test_encoder_uses_the_values_own_exponent() -> None:
    assert encode_sfloat(Decimal("5.50")) == 0xE226
    assert encode_sfloat(Decimal("5.5")) == 0xF037
    assert encode_sfloat(Decimal(-1)) == 0x0FFF
    assert sfloat_bytes(Decimal("0.00095")) == b"\x5f\xb0"


def test_encoder_moves_exponent_only_when_exact() -> None:
    assert decode_sfloat(encode_sfloat(Decimal("123000"))) == Decimal("123000")
    assert decode_sfloat(encode_sfloat(Decimal("1.0000000000"))) == 1
    with pytest.raises(ValueError, match="no exact"):
        encode_sfloat(Decimal("1.2345"))
    with pytest.raises(ValueError, match="no exact"):
        encode_sfloat(Decimal("1E+20"))
    with pytest.raises(ValueError, match="special"):
        encode_sfloat(Decimal(2047))  # would be the NaN word
    with pytest.raises(ValueError, match="finite"):
        encode_sfloat(Decimal("NaN"))


@given(st.integers(0, 0xFFFF))
def test_every_word_round_trips(word: int) -> None:
    value = decode_sfloat(word)
    again = encode_sfloat(value)
    assert decode_sfloat(again) == value
    if isinstance(value, SfloatSpecial) or word >> 12 == 0 or word >> 12 >= 8:
        # exponent <= 0: the exact word comes back (digits and exponent preserved)
        assert again == word


@given(
    st.integers(-2048, 2047),
    st.integers(-8, 7),
)
def test_value_is_mantissa_times_ten_to_exponent(mantissa: int, exponent: int) -> None:
    word = ((exponent & 0xF) << 12) | (mantissa & 0xFFF)
    value = decode_sfloat(word)
    if exponent == 0 and mantissa in (2046, 2047, -2048, -2047, -2046):
        assert isinstance(value, SfloatSpecial)
    else:
        assert value == Decimal(mantissa) * Decimal(10) ** exponent
