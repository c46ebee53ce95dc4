"""The RACP client state machine driven by any event sequence a meter (and the BLE shell) could
produce. It documents that it never raises while driven in order (``RacpUsageError`` is for a
caller that calls ``start`` twice, which this driver never does) and that it always finishes:
the driver checks both, and that a finished result is consistent."""

from __future__ import annotations

from datetime import datetime

from edge.errors import RacpError
from edge.gatt import racp
from edge.gatt.glucose import GlucoseMeasurement, encode_glucose_measurement
from edge.gatt.glucose_context import GlucoseContext, Meal, encode_glucose_context
from edge.gatt.racp import RacpOpcode, RacpResponse
from edge.gatt.racp_client import (
    SEQ_MODULO,
    WINDOW,
    Action,
    Finished,
    RacpSync,
    SyncStatus,
    Wait,
    Write,
)
from edge.gatt.uuids import ATT_CCCD_IMPROPERLY_CONFIGURED, ATT_PROCEDURE_ALREADY_IN_PROGRESS
from fuzz.data import Data

_TIMES = (datetime(2024, 1, 1, 8, 0), datetime(2024, 1, 1, 9, 30), datetime(2099, 12, 31))
_ATT_ERRORS = (ATT_PROCEDURE_ALREADY_IN_PROGRESS, ATT_CCCD_IMPROPERLY_CONFIGURED, 0x01, 0x0E)
_OPCODES = tuple(RacpOpcode)
_RESPONSES = tuple(RacpResponse)
#: after the events run out: enough silent deadlines for any state to finish
_MAX_DRAIN_STEPS = 8


def _measurement(d: Data) -> bytes:
    """A valid Glucose Measurement whose sequence number the fuzzer picks."""
    return encode_glucose_measurement(GlucoseMeasurement(
        sequence_number=d.u16(), base_time=d.pick(_TIMES), context_follows=d.flag(),
    ))


def _context(d: Data) -> bytes:
    return encode_glucose_context(GlucoseContext(sequence_number=d.u16(), meal=Meal.FASTING))


def _indication(d: Data) -> bytes:
    kind = d.u8() % 4
    if kind == 0:
        return racp.encode_number_of_records(d.u16())
    if kind == 3:
        return d.sized(8)  # anything, malformed or not
    return bytes([RacpOpcode.RESPONSE_CODE, 0, d.pick(_OPCODES), d.pick(_RESPONSES)])


def _check_result(sync: RacpSync, finished: Finished, cursor: int | None,
                  measurements: int) -> None:
    result = finished.result
    assert sync.result is result
    assert result.requested_from == cursor
    assert len(result.records) <= measurements
    keys = [(r.measurement.sequence_number, r.measurement.base_time) for r in result.records]
    assert len(set(keys)) == len(keys), "a record taken twice"
    for rec in result.records:
        seq = rec.measurement.sequence_number
        if cursor is not None:
            assert (seq - cursor) % SEQ_MODULO < WINDOW, "a record outside the window"
        if rec.context is not None:
            assert rec.context.sequence_number == seq
    if result.status is SyncStatus.COMPLETE:
        assert result.reason is None
        if result.records:
            newest = result.records[-1].measurement.sequence_number
            assert result.next_sequence == (newest + 1) % SEQ_MODULO
        else:
            assert result.next_sequence == cursor
        result.raise_for_status()
    else:
        assert result.reason
        assert result.next_sequence == cursor, "a failed sync moved the cursor"
        try:
            result.raise_for_status()
        except RacpError:
            pass
        else:
            raise AssertionError("raise_for_status did not raise for an incomplete sync")


def racp_client(data: bytes) -> None:
    d = Data(data)
    cursor = None if d.flag() else d.u16()
    sync = RacpSync(
        next_sequence=cursor,
        timeout_s=1.0 + d.u8() % 60,
        max_busy_retries=d.u8() % 5,
        check_reset=d.flag(),
        max_notifications=1 + d.u16() % 300,
    )
    now = 0.0
    action: Action = sync.start(now)
    measurements = 0
    while d.remaining:
        if isinstance(action, Finished):
            _check_result(sync, action, cursor, measurements)
        now += d.u8() / 8
        event = d.u8() % 8
        if event == 0 and isinstance(action, Write):
            action = sync.write_failed(d.pick(_ATT_ERRORS), now)
        elif event == 1:
            measurements += 1
            action = sync.measurement(_measurement(d), now)
        elif event == 2:
            measurements += 1
            action = sync.measurement(d.sized(24), now)
        elif event == 3:
            action = sync.context(_context(d) if d.flag() else d.sized(24), now)
        elif event in (4, 5):
            action = sync.indication(_indication(d), now)
        elif event == 6:
            action = sync.tick(now)
        elif event == 7 and d.u8() < 16:
            action = sync.abort(now)
        if isinstance(action, Finished):
            again = sync.tick(now + 1000.0)
            assert isinstance(again, Finished) and again.result is action.result
    # The meter falls silent: every state must finish within a few deadlines.
    for _ in range(_MAX_DRAIN_STEPS):
        if isinstance(action, Finished):
            break
        assert isinstance(action, Write | Wait)
        now = max(now, action.deadline)
        action = sync.tick(now)
    assert isinstance(action, Finished), f"not finished after silence: {sync.state}"
    _check_result(sync, action, cursor, measurements)
