"""RACP 0x2A52 messages: request encoders, and one decoder for requests and responses."""

from __future__ import annotations

import contextlib
from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.errors import MalformedPayload
from edge.gatt import racp
from edge.gatt.racp import (
    RacpFilter,
    RacpNumberOfRecords,
    RacpOpcode,
    RacpOperator,
    RacpRequest,
    RacpResponse,
    RacpResponseCode,
    decode_racp,
)


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (racp.report_all(), "01 01"),
        (racp.report_from(5), "01 03 01 0500"),
        (racp.report_from(0x1234), "01 03 01 3412"),
        (racp.report_from(0xFFFF), "01 03 01 FFFF"),
        (racp.report_up_to(10), "01 02 01 0A00"),
        (racp.report_range(1, 0x0102), "01 04 01 0100 0201"),
        (racp.report_first(), "01 05"),
        (racp.report_last(), "01 06"),
        (racp.number_of_records_all(), "04 01"),
        (racp.number_of_records_from(3), "04 03 01 0300"),
        (racp.abort(), "03 00"),
        (racp.delete_all(), "02 01"),
        (racp.encode_number_of_records(258), "05 00 0201"),
        (racp.encode_response_code(RacpOpcode.REPORT_STORED_RECORDS, RacpResponse.SUCCESS),
         "06 00 01 01"),
    ],
)
def test_encoders(payload: bytes, expected: str) -> None:
    assert payload == h(expected)


def test_encoders_refuse_non_uint16() -> None:
    for bad in (-1, 0x10000):
        with pytest.raises(ValueError, match="uint16"):
            racp.report_from(bad)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ("05 00 0A00", RacpNumberOfRecords(10)),
        ("05 00 FFFF", RacpNumberOfRecords(65535)),
        ("06 00 01 01", RacpResponseCode(RacpOpcode.REPORT_STORED_RECORDS, RacpResponse.SUCCESS)),
        ("06 00 01 06",
         RacpResponseCode(RacpOpcode.REPORT_STORED_RECORDS, RacpResponse.NO_RECORDS_FOUND)),
        ("06 00 03 01", RacpResponseCode(RacpOpcode.ABORT_OPERATION, RacpResponse.SUCCESS)),
        ("06 00 03 07",
         RacpResponseCode(RacpOpcode.ABORT_OPERATION, RacpResponse.ABORT_UNSUCCESSFUL)),
        ("06 00 01 04",
         RacpResponseCode(RacpOpcode.REPORT_STORED_RECORDS, RacpResponse.OPERATOR_NOT_SUPPORTED)),
        ("06 00 02 01", RacpResponseCode(RacpOpcode.DELETE_STORED_RECORDS, RacpResponse.SUCCESS)),
        ("06 00 04 09", RacpResponseCode(RacpOpcode.REPORT_NUMBER_OF_STORED_RECORDS,
                                         RacpResponse.OPERAND_NOT_SUPPORTED)),
    ],
)
def test_decode_responses(payload: str, expected: object) -> None:
    assert decode_racp(h(payload)) == expected


def test_every_response_code_has_its_name() -> None:
    names = [r.label for r in RacpResponse]
    assert names == [
        "success", "opcode_not_supported", "invalid_operator", "operator_not_supported",
        "invalid_operand", "no_records_found", "abort_unsuccessful", "procedure_not_completed",
        "operand_not_supported",
    ]
    for code in range(1, 10):
        msg = decode_racp(bytes([6, 0, 1, code]))
        assert isinstance(msg, RacpResponseCode) and msg.response == code


def test_decode_requests() -> None:
    assert decode_racp(h("01 03 01 3412")) == RacpRequest(
        RacpOpcode.REPORT_STORED_RECORDS, RacpOperator.GREATER_THAN_OR_EQUAL_TO,
        RacpFilter.SEQUENCE_NUMBER, (0x1234,),
    )
    assert decode_racp(h("03 00")) == RacpRequest(RacpOpcode.ABORT_OPERATION, RacpOperator.NULL)
    assert decode_racp(h("01 04 02 EA07030F081E00 EA07030F081F00")) == RacpRequest(
        RacpOpcode.REPORT_STORED_RECORDS, RacpOperator.WITHIN_RANGE_OF,
        RacpFilter.USER_FACING_TIME,
        (datetime(2026, 3, 15, 8, 30), datetime(2026, 3, 15, 8, 31)),
    )


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        ("", "truncated"),
        ("06", "truncated"),
        ("06 00 01", "truncated"),
        ("06 00 01 01 00", "trailing"),
        ("05 00 0A", "truncated"),
        ("05 00 0A00 00", "trailing"),
        ("06 01 01 01", "operator 0"),
        ("06 00 07 01", "unknown request opcode"),
        ("06 00 05 01", "unknown request opcode"),
        ("06 00 01 00", "reserved response code 0"),
        ("06 00 01 0A", "reserved response code 10"),
        ("00 00", "reserved opcode 0"),
        ("09 00", "reserved opcode 9"),
        ("01 07", "reserved operator 7"),
        ("01 00", "needs an operator"),
        ("01 03", "truncated"),
        ("01 03 01 05", "truncated"),
        ("01 03 03 0500", "reserved filter type 3"),
        ("01 01 00", "trailing"),
        ("03 01", "operator 0"),
        ("01 03 02 EA07 0D 0F 08 1E 00", "invalid user facing time"),
    ],
)
def test_decode_malformed(payload: str, why: str) -> None:
    with pytest.raises(MalformedPayload, match=why) as info:
        decode_racp(h(payload))
    assert info.value.characteristic == "racp"


requests = st.one_of(
    st.just(racp.report_all()), st.just(racp.report_first()), st.just(racp.report_last()),
    st.just(racp.abort()), st.just(racp.delete_all()), st.just(racp.number_of_records_all()),
    st.integers(0, 0xFFFF).map(racp.report_from),
    st.integers(0, 0xFFFF).map(racp.report_up_to),
    st.integers(0, 0xFFFF).map(racp.number_of_records_from),
    st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)).map(lambda t: racp.report_range(*t)),
    st.integers(0, 0xFFFF).map(racp.encode_number_of_records),
    st.tuples(st.sampled_from([1, 2, 3, 4]), st.sampled_from(RacpResponse)).map(
        lambda t: racp.encode_response_code(RacpOpcode(t[0]), t[1])
    ),
)


@given(requests, st.binary(min_size=1, max_size=3))
def test_round_trip_prefixes_and_trailing(payload: bytes, junk: bytes) -> None:
    msg = decode_racp(payload)
    if isinstance(msg, RacpRequest):
        assert msg.encode() == payload
    for cut in range(len(payload)):
        with pytest.raises(MalformedPayload):
            decode_racp(payload[:cut])
    with pytest.raises(MalformedPayload):
        decode_racp(payload + junk)


@given(st.binary(max_size=12))
def test_arbitrary_bytes_only_ever_raise_malformed(data: bytes) -> None:
    with contextlib.suppress(MalformedPayload):
        decode_racp(data)
