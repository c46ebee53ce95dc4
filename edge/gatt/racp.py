"""Record Access Control Point 0x2A52: request encoders and a decoder for every message.

A message is ``opcode, operator, operand…``; the only filter type the gateway uses is
1 = sequence number (uint16). Responses are ``05 00 LL HH`` (number of stored records) and
``06 00 <request opcode> <response code>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum

from edge.gatt._reader import Reader, encode_date_time

RACP = "racp"

SEQUENCE_MAX = 0xFFFF


class RacpOpcode(IntEnum):
    REPORT_STORED_RECORDS = 1
    DELETE_STORED_RECORDS = 2
    ABORT_OPERATION = 3
    REPORT_NUMBER_OF_STORED_RECORDS = 4
    NUMBER_OF_STORED_RECORDS_RESPONSE = 5
    RESPONSE_CODE = 6

    @property
    def label(self) -> str:
        """``report_stored_records`` …"""
        return self.name.lower()


class RacpOperator(IntEnum):
    NULL = 0
    ALL_RECORDS = 1
    LESS_THAN_OR_EQUAL_TO = 2
    GREATER_THAN_OR_EQUAL_TO = 3
    WITHIN_RANGE_OF = 4
    FIRST_RECORD = 5
    LAST_RECORD = 6

    @property
    def label(self) -> str:
        return self.name.lower()


class RacpFilter(IntEnum):
    SEQUENCE_NUMBER = 1
    USER_FACING_TIME = 2

    @property
    def label(self) -> str:
        return self.name.lower()


class RacpResponse(IntEnum):
    SUCCESS = 1
    OPCODE_NOT_SUPPORTED = 2
    INVALID_OPERATOR = 3
    OPERATOR_NOT_SUPPORTED = 4
    INVALID_OPERAND = 5
    NO_RECORDS_FOUND = 6
    ABORT_UNSUCCESSFUL = 7
    PROCEDURE_NOT_COMPLETED = 8
    OPERAND_NOT_SUPPORTED = 9

    @property
    def label(self) -> str:
        return self.name.lower()


_REQUEST_OPCODES = (
    RacpOpcode.REPORT_STORED_RECORDS,
    RacpOpcode.DELETE_STORED_RECORDS,
    RacpOpcode.ABORT_OPERATION,
    RacpOpcode.REPORT_NUMBER_OF_STORED_RECORDS,
)


# --- messages ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RacpRequest:
    """A request a client writes. ``operand`` is ``()``, ``(n,)`` or ``(low, high)``."""

    opcode: RacpOpcode
    operator: RacpOperator
    filter_type: RacpFilter | None = None
    operand: tuple[int, ...] | tuple[datetime, ...] = ()

    def encode(self) -> bytes:
        """The bytes to write."""
        out = bytearray([self.opcode, self.operator])
        if self.filter_type is not None:
            out.append(self.filter_type)
            for value in self.operand:
                if isinstance(value, datetime):
                    out += encode_date_time(value)
                else:
                    out += _u16(value)
        return bytes(out)


@dataclass(frozen=True, slots=True)
class RacpNumberOfRecords:
    """``05 00 LL HH``."""

    number_of_records: int


@dataclass(frozen=True, slots=True)
class RacpResponseCode:
    """``06 00 <request opcode> <response code>``."""

    request_opcode: RacpOpcode
    response: RacpResponse


RacpMessage = RacpRequest | RacpNumberOfRecords | RacpResponseCode


def _u16(value: int) -> bytes:
    if not 0 <= value <= SEQUENCE_MAX:
        raise ValueError("sequence numbers are uint16")
    return value.to_bytes(2, "little")


# --- encoders (what the gateway writes) -------------------------------------------------------


def _seq(opcode: RacpOpcode, operator: RacpOperator, *operand: int) -> bytes:
    for value in operand:
        _u16(value)
    return RacpRequest(opcode, operator, RacpFilter.SEQUENCE_NUMBER, operand).encode()


def report_all() -> bytes:
    """``01 01``: report every stored record."""
    return RacpRequest(RacpOpcode.REPORT_STORED_RECORDS, RacpOperator.ALL_RECORDS).encode()


def report_from(sequence: int) -> bytes:
    """``01 03 01 LL HH``: report records with sequence number ≥ ``sequence``."""
    return _seq(RacpOpcode.REPORT_STORED_RECORDS, RacpOperator.GREATER_THAN_OR_EQUAL_TO, sequence)


def report_up_to(sequence: int) -> bytes:
    """``01 02 01 LL HH``: report records with sequence number ≤ ``sequence``."""
    return _seq(RacpOpcode.REPORT_STORED_RECORDS, RacpOperator.LESS_THAN_OR_EQUAL_TO, sequence)


def report_range(low: int, high: int) -> bytes:
    """``01 04 01 <low> <high>``: report records with low ≤ sequence number ≤ high."""
    return _seq(RacpOpcode.REPORT_STORED_RECORDS, RacpOperator.WITHIN_RANGE_OF, low, high)


def report_first() -> bytes:
    """``01 05``: report the oldest record."""
    return RacpRequest(RacpOpcode.REPORT_STORED_RECORDS, RacpOperator.FIRST_RECORD).encode()


def report_last() -> bytes:
    """``01 06``: report the newest record."""
    return RacpRequest(RacpOpcode.REPORT_STORED_RECORDS, RacpOperator.LAST_RECORD).encode()


def number_of_records_all() -> bytes:
    """``04 01``: how many records are stored."""
    return RacpRequest(
        RacpOpcode.REPORT_NUMBER_OF_STORED_RECORDS, RacpOperator.ALL_RECORDS
    ).encode()


def number_of_records_from(sequence: int) -> bytes:
    """``04 03 01 LL HH``: how many records have sequence number ≥ ``sequence``."""
    return _seq(
        RacpOpcode.REPORT_NUMBER_OF_STORED_RECORDS,
        RacpOperator.GREATER_THAN_OR_EQUAL_TO,
        sequence,
    )


def abort() -> bytes:
    """``03 00``: abort the procedure in progress."""
    return RacpRequest(RacpOpcode.ABORT_OPERATION, RacpOperator.NULL).encode()


def delete_all() -> bytes:
    """``02 01``: delete every stored record."""
    return RacpRequest(RacpOpcode.DELETE_STORED_RECORDS, RacpOperator.ALL_RECORDS).encode()


def encode_number_of_records(n: int) -> bytes:
    """``05 00 LL HH`` (what a server indicates; for tests)."""
    return bytes([RacpOpcode.NUMBER_OF_STORED_RECORDS_RESPONSE, RacpOperator.NULL]) + _u16(n)


def encode_response_code(request: RacpOpcode, response: RacpResponse) -> bytes:
    """``06 00 <request> <code>`` (what a server indicates; for tests)."""
    return bytes([RacpOpcode.RESPONSE_CODE, RacpOperator.NULL, request, response])


# --- decoder ----------------------------------------------------------------------------------


def decode_racp(data: bytes | bytearray | memoryview) -> RacpMessage:
    """Decode any RACP message: a response (indicated by the server) or a request."""
    r = Reader(RACP, data)
    code = r.u8("opcode")
    try:
        opcode = RacpOpcode(code)
    except ValueError:
        raise r.malformed(f"reserved opcode {code}") from None
    operator_code = r.u8("operator")
    try:
        operator = RacpOperator(operator_code)
    except ValueError:
        raise r.malformed(f"reserved operator {operator_code}") from None
    if opcode is RacpOpcode.NUMBER_OF_STORED_RECORDS_RESPONSE:
        _expect_null(r, operator)
        n = r.u16("number of records")
        r.finish()
        return RacpNumberOfRecords(n)
    if opcode is RacpOpcode.RESPONSE_CODE:
        _expect_null(r, operator)
        request_code = r.u8("request opcode")
        response_code = r.u8("response code")
        r.finish()
        if request_code not in _REQUEST_OPCODES:
            raise r.malformed(f"response to unknown request opcode {request_code}")
        try:
            response = RacpResponse(response_code)
        except ValueError:
            raise r.malformed(f"reserved response code {response_code}") from None
        return RacpResponseCode(RacpOpcode(request_code), response)
    return _decode_request(r, opcode, operator)


def _expect_null(r: Reader, operator: RacpOperator) -> None:
    if operator is not RacpOperator.NULL:
        raise r.malformed("a response carries operator 0 (null)")


def _decode_request(r: Reader, opcode: RacpOpcode, operator: RacpOperator) -> RacpRequest:
    if opcode is RacpOpcode.ABORT_OPERATION:
        _expect_null(r, operator)
        r.finish()
        return RacpRequest(opcode, operator)
    if operator is RacpOperator.NULL:
        raise r.malformed(f"{opcode.label} needs an operator")
    operands = {
        RacpOperator.LESS_THAN_OR_EQUAL_TO: 1,
        RacpOperator.GREATER_THAN_OR_EQUAL_TO: 1,
        RacpOperator.WITHIN_RANGE_OF: 2,
    }.get(operator, 0)
    if not operands:
        r.finish()
        return RacpRequest(opcode, operator)
    filter_code = r.u8("filter type")
    try:
        filter_type = RacpFilter(filter_code)
    except ValueError:
        raise r.malformed(f"reserved filter type {filter_code}") from None
    if filter_type is RacpFilter.SEQUENCE_NUMBER:
        seqs = tuple(r.u16("sequence number operand") for _ in range(operands))
        r.finish()
        return RacpRequest(opcode, operator, filter_type, seqs)
    times = tuple(r.date_time("user facing time operand") for _ in range(operands))
    r.finish()
    return RacpRequest(opcode, operator, filter_type, times)
