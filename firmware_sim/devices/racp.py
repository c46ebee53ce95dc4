"""The Record Access Control Point server as a pure decision: request bytes and the sequence
numbers in the store in, what to do out. The meter's async shell carries it out (sends the
records, paced on the clock, then the response indication)."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from firmware_sim import encoders as enc


class Action(StrEnum):
    REPORT = "report"
    DELETE = "delete"
    COUNT = "count"
    ABORT = "abort"
    #: answer with ``response`` and nothing else (an error, or no records found)
    RESPOND = "respond"


@dataclass(frozen=True)
class Decision:
    action: Action
    #: the request opcode the final response names
    opcode: int
    #: positions (indices into the store, in store order) the procedure applies to
    selected: tuple[int, ...] = ()
    #: the final indication for COUNT / DELETE / RESPOND (REPORT/ABORT build theirs later)
    response: bytes = b""


def _respond(opcode: int, code: int) -> Decision:
    return Decision(Action.RESPOND, opcode, response=enc.racp_response(opcode, code))


def decide(request: bytes, sequences: Sequence[int], *, delete_supported: bool = True) -> Decision:
    """Decide how to answer ``request`` given the store's sequence numbers (in store order,
    oldest first). Filters compare sequence numbers numerically (as meters do, so a store that
    wrapped past 65535 answers "≥ 65535" with the pre-wrap record only)."""
    if not request:
        return _respond(0, enc.RSP_OPCODE_NOT_SUPPORTED)
    opcode = request[0]
    operator = request[1] if len(request) > 1 else None
    operand = request[2:]
    if opcode == enc.RACP_ABORT:
        if operator != enc.OP_NULL:
            return _respond(opcode, enc.RSP_INVALID_OPERATOR)
        if operand:
            return _respond(opcode, enc.RSP_INVALID_OPERAND)
        return Decision(Action.ABORT, opcode)
    supported = {enc.RACP_REPORT, enc.RACP_REPORT_NUMBER}
    if delete_supported:
        supported.add(enc.RACP_DELETE)
    if opcode not in supported:
        return _respond(opcode, enc.RSP_OPCODE_NOT_SUPPORTED)
    if operator is None or operator == enc.OP_NULL:
        return _respond(opcode, enc.RSP_INVALID_OPERATOR)
    if operator > enc.OP_LAST:
        return _respond(opcode, enc.RSP_OPERATOR_NOT_SUPPORTED)

    positions = range(len(sequences))
    if operator in (enc.OP_ALL, enc.OP_FIRST, enc.OP_LAST):
        if operand:
            return _respond(opcode, enc.RSP_INVALID_OPERAND)
        if operator == enc.OP_ALL:
            selected = tuple(positions)
        elif not sequences:
            selected = ()
        else:
            selected = (0,) if operator == enc.OP_FIRST else (len(sequences) - 1,)
    else:
        if not operand:
            return _respond(opcode, enc.RSP_INVALID_OPERAND)
        if operand[0] != enc.FILTER_SEQUENCE:
            # user facing time (2) and the reserved filter types: not this meter
            return _respond(opcode, enc.RSP_OPERAND_NOT_SUPPORTED)
        values = operand[1:]
        want = 4 if operator == enc.OP_WITHIN_RANGE else 2
        if len(values) != want:
            return _respond(opcode, enc.RSP_INVALID_OPERAND)
        if operator == enc.OP_WITHIN_RANGE:
            lo, hi = struct.unpack("<HH", values)
            if lo > hi:
                return _respond(opcode, enc.RSP_INVALID_OPERAND)
        else:
            (n,) = struct.unpack("<H", values)
            lo, hi = (0, n) if operator == enc.OP_LESS_OR_EQUAL else (n, 0xFFFF)
        selected = tuple(i for i in positions if lo <= sequences[i] <= hi)

    if opcode == enc.RACP_REPORT_NUMBER:
        return Decision(
            Action.COUNT, opcode, selected, response=enc.racp_number_response(len(selected))
        )
    if not selected:
        return _respond(opcode, enc.RSP_NO_RECORDS_FOUND)
    if opcode == enc.RACP_DELETE:
        return Decision(
            Action.DELETE, opcode, selected, response=enc.racp_response(opcode, enc.RSP_SUCCESS)
        )
    return Decision(Action.REPORT, opcode, selected)
