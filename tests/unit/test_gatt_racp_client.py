"""The pure RACP "sync from cursor" machine, driven through every path.

``Meter`` below is a tiny test double written from the reference (it does not use
firmware_sim): it answers RACP requests from a list of stored records, either comparing
sequence numbers numerically (like most meters) or serially across the wrap.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.errors import RacpError
from edge.gatt import racp
from edge.gatt.glucose import GlucoseMeasurement, encode_glucose_measurement
from edge.gatt.glucose_context import GlucoseContext, Meal, encode_glucose_context
from edge.gatt.racp import RacpOpcode, RacpOperator, RacpRequest, RacpResponse, decode_racp
from edge.gatt.racp_client import (
    Action,
    Finished,
    RacpSync,
    RacpUsageError,
    State,
    SyncResult,
    SyncStatus,
    Wait,
    Write,
)
from edge.gatt.uuids import ATT_PROCEDURE_ALREADY_IN_PROGRESS

T0 = datetime(2026, 3, 15, 8, 0)
TIMEOUT = 10.0
SUCCESS = racp.encode_response_code(RacpOpcode.REPORT_STORED_RECORDS, RacpResponse.SUCCESS)
NO_RECORDS = racp.encode_response_code(
    RacpOpcode.REPORT_STORED_RECORDS, RacpResponse.NO_RECORDS_FOUND
)
ABORT_OK = racp.encode_response_code(RacpOpcode.ABORT_OPERATION, RacpResponse.SUCCESS)


def gm(seq: int, *, minutes: int | None = None, ctx: bool = False) -> bytes:
    base = T0 + timedelta(minutes=seq if minutes is None else minutes)
    return encode_glucose_measurement(
        GlucoseMeasurement(sequence_number=seq, base_time=base, context_follows=ctx)
    )


def gc(seq: int, meal: Meal = Meal.FASTING) -> bytes:
    return encode_glucose_context(GlucoseContext(sequence_number=seq, meal=meal))


def seqs(result: SyncResult) -> list[int]:
    return [r.measurement.sequence_number for r in result.records]


def finished(action: Action) -> SyncResult:
    assert isinstance(action, Finished), action
    return action.result


def expect_write(action: Action, payload: bytes) -> None:
    assert isinstance(action, Write), action
    assert action.payload == payload


@dataclass
class Meter:
    """Answers RACP writes from stored sequence numbers (each record with a context)."""

    stored: list[int]
    wrap_aware: bool = False
    busy: int = 0  # this many report writes fail with ATT 0x80
    supports_last: bool = True
    supports_le: bool = True
    events: list[tuple[str, bytes]] = field(default_factory=list)
    writes: list[bytes] = field(default_factory=list)

    def write(self, payload: bytes) -> int | None:
        """Handle a write; returns an ATT error code or None and queues the events."""
        self.writes.append(payload)
        req = decode_racp(payload)
        assert isinstance(req, RacpRequest)
        if req.opcode is RacpOpcode.ABORT_OPERATION:
            self.events.append(("racp", ABORT_OK))
            return None
        if self.busy:
            self.busy -= 1
            return ATT_PROCEDURE_ALREADY_IN_PROGRESS
        selected = self._select(req)
        if selected is None:
            self.events.append(("racp", racp.encode_response_code(
                RacpOpcode.REPORT_STORED_RECORDS, RacpResponse.OPERATOR_NOT_SUPPORTED)))
            return None
        for s in selected:
            self.events.append(("m", gm(s, ctx=True)))
            self.events.append(("c", gc(s)))
        self.events.append(("racp", SUCCESS if selected else NO_RECORDS))
        return None

    def _select(self, req: RacpRequest) -> list[int] | None:
        op = req.operator
        if op is RacpOperator.ALL_RECORDS:
            return list(self.stored)
        if op is RacpOperator.LAST_RECORD:
            return self.stored[-1:] if self.supports_last else None
        if op is RacpOperator.FIRST_RECORD:
            return self.stored[:1]
        (n,) = req.operand
        assert isinstance(n, int)
        if op is RacpOperator.GREATER_THAN_OR_EQUAL_TO:
            if self.wrap_aware:
                return [s for s in self.stored if (s - n) % 0x10000 < 0x8000]
            return [s for s in self.stored if s >= n]
        if op is RacpOperator.LESS_THAN_OR_EQUAL_TO and self.supports_le:
            return [s for s in self.stored if s <= n]
        return None


def run(sync: RacpSync, meter: Meter, now: float = 0.0) -> SyncResult:
    """The shell's loop from the module docstring, against the test meter."""
    action = sync.start(now)
    for _ in range(10_000):
        if isinstance(action, Finished):
            return action.result
        if isinstance(action, Write):
            err = meter.write(action.payload)
            if err is not None:
                action = sync.write_failed(err, now)
                continue
        if not meter.events:
            now = action.deadline
            action = sync.tick(now)
            continue
        kind, data = meter.events.pop(0)
        now += 0.01
        handler = {"m": sync.measurement, "c": sync.context, "racp": sync.indication}[kind]
        action = handler(data, now)
    raise AssertionError("sync did not finish")


# --- success paths ----------------------------------------------------------------------------


def test_first_sync_reports_all_and_pairs_contexts() -> None:
    meter = Meter(stored=[1, 2, 3])
    result = run(RacpSync(None, TIMEOUT), meter)
    assert meter.writes == [racp.report_all()]
    assert result.status is SyncStatus.COMPLETE and result.complete
    assert seqs(result) == [1, 2, 3]
    assert all(r.context is not None and r.context.meal is Meal.FASTING for r in result.records)
    assert result.next_sequence == 4
    assert result.meter_last_sequence == 3
    assert not result.reset_suspected and result.missing_contexts == ()
    result.raise_for_status()


def test_sync_from_cursor_requests_greater_or_equal() -> None:
    meter = Meter(stored=[3, 4, 5, 6])
    result = run(RacpSync(5, TIMEOUT), meter)
    assert meter.writes == [racp.report_from(5)]
    assert seqs(result) == [5, 6]
    assert result.next_sequence == 7
    assert result.requested_from == 5


def test_hand_driven_call_sequence() -> None:
    sync = RacpSync(5, TIMEOUT)
    expect_write(sync.start(100.0), bytes.fromhex("0103010500"))
    assert sync.state is State.WAITING
    # a notification may be fed before the write returned: nothing else to call
    assert sync.measurement(gm(5, ctx=True), 100.5) == Wait(110.5)
    assert sync.context(gc(5, Meal.BEDTIME), 101.0) == Wait(111.0)
    assert sync.indication(racp.encode_number_of_records(3), 101.5) == Wait(111.0)
    result = finished(sync.indication(SUCCESS, 102.0))
    assert result.records[0].context == GlucoseContext(sequence_number=5, meal=Meal.BEDTIME)
    assert sync.result is result
    assert sync.state.name == "FINISHED"


# --- no records, reset detection ----------------------------------------------------------------


def test_no_new_records_probes_last_record_and_keeps_cursor() -> None:
    meter = Meter(stored=[7, 8, 9])
    result = run(RacpSync(10, TIMEOUT), meter)
    assert meter.writes == [racp.report_from(10), racp.report_last()]
    assert result.complete and result.records == () and result.no_records
    assert result.next_sequence == 10
    assert result.meter_last_sequence == 9
    assert not result.reset_suspected
    assert result.orphan_contexts == ()  # the probed record's context is not an orphan


def test_meter_that_restarted_numbering_is_reported() -> None:
    meter = Meter(stored=[0, 1, 2, 3, 4])
    result = run(RacpSync(100, TIMEOUT), meter)
    assert result.complete and result.records == ()
    assert result.meter_last_sequence == 4
    assert result.reset_suspected
    # the shell then resyncs with report-all; stable ids dedupe what it already had
    again = run(RacpSync(None, TIMEOUT), Meter(stored=[0, 1, 2, 3, 4]))
    assert seqs(again) == [0, 1, 2, 3, 4] and again.next_sequence == 5


def test_empty_meter_is_not_a_reset() -> None:
    sync = RacpSync(10, TIMEOUT)
    sync.start(0.0)
    expect_write(sync.indication(NO_RECORDS, 1.0), racp.report_last())
    result = finished(sync.indication(NO_RECORDS, 2.0))
    assert result.complete and result.no_records
    assert result.meter_last_sequence is None and not result.reset_suspected


def test_probe_not_supported_still_completes() -> None:
    meter = Meter(stored=[1, 2], supports_last=False)
    result = run(RacpSync(3, TIMEOUT), meter)
    assert result.complete and not result.reset_suspected and result.next_sequence == 3


def test_no_records_without_probe() -> None:
    sync = RacpSync(10, TIMEOUT, check_reset=False)
    sync.start(0.0)
    result = finished(sync.indication(b"\x06\x00\x01\x06", 1.0))  # 06 00 01 06: done, nothing
    assert result.complete and result.no_records and result.next_sequence == 10


def test_first_sync_of_an_empty_meter() -> None:
    result = run(RacpSync(None, TIMEOUT), Meter(stored=[]))
    assert result.complete and result.no_records and result.next_sequence is None


# --- busy meter (ATT 0x80) ----------------------------------------------------------------------


def test_procedure_already_in_progress_aborts_then_retries() -> None:
    meter = Meter(stored=[1, 2], busy=2)
    result = run(RacpSync(1, TIMEOUT), meter)
    assert meter.writes == [
        racp.report_from(1), racp.abort(), racp.report_from(1), racp.abort(), racp.report_from(1)
    ]
    assert result.complete and seqs(result) == [1, 2] and result.busy_retries == 2


def test_procedure_already_in_progress_is_bounded() -> None:
    meter = Meter(stored=[1, 2], busy=99)
    result = run(RacpSync(1, TIMEOUT, max_busy_retries=2), meter)
    assert meter.writes.count(racp.abort()) == 2
    assert result.status is SyncStatus.FAILED
    assert result.reason == "procedure_already_in_progress"
    assert result.next_sequence == 1
    with pytest.raises(RacpError, match="procedure_already_in_progress"):
        result.raise_for_status()


def test_late_answer_of_the_busy_procedure_is_ignored_while_clearing() -> None:
    sync = RacpSync(1, TIMEOUT)
    sync.start(0.0)
    expect_write(sync.write_failed(0x80, 0.1), racp.abort())
    # the old procedure's own last word comes first; only the abort's answer triggers a retry
    assert isinstance(sync.indication(b"\x06\x00\x01\x08", 0.2), Wait)
    expect_write(sync.indication(ABORT_OK, 0.3), racp.report_from(1))
    # an abort the meter could not carry out still leads to a (bounded) retry
    sync2 = RacpSync(1, TIMEOUT)
    sync2.start(0.0)
    sync2.write_failed(0x80, 0.1)
    expect_write(sync2.indication(b"\x06\x00\x03\x07", 0.2), racp.report_from(1))


@pytest.mark.parametrize(
    ("code", "reason"), [(0x81, "cccd_improperly_configured"), (0x05, "att_error_0x05")]
)
def test_other_write_errors_fail(code: int, reason: str) -> None:
    sync = RacpSync(1, TIMEOUT)
    sync.start(0.0)
    result = finished(sync.write_failed(code, 0.1))
    assert result.status is SyncStatus.FAILED and result.reason == reason


def test_abort_write_failing_while_clearing_fails() -> None:
    sync = RacpSync(1, TIMEOUT)
    sync.start(0.0)
    sync.write_failed(0x80, 0.1)
    result = finished(sync.write_failed(0x80, 0.2))
    assert result.reason == "procedure_already_in_progress"


# --- abort by the caller ------------------------------------------------------------------------


def test_caller_abort_mid_transfer_keeps_records_but_not_the_cursor() -> None:
    sync = RacpSync(5, TIMEOUT)
    sync.start(0.0)
    sync.measurement(gm(5), 0.1)
    expect_write(sync.abort(0.2), racp.abort())
    assert sync.state is State.STOPPING
    sync.measurement(gm(6), 0.3)  # still in flight: kept
    assert isinstance(sync.indication(SUCCESS, 0.35), Wait)  # not the abort's answer
    result = finished(sync.indication(ABORT_OK, 0.4))
    assert result.status is SyncStatus.ABORTED and result.reason == "aborted"
    assert seqs(result) == [5, 6]
    assert result.next_sequence == 5
    with pytest.raises(RacpError, match="aborted"):
        result.raise_for_status()


def test_abort_before_start_writes_nothing() -> None:
    result = finished(RacpSync(5, TIMEOUT).abort(0.0))
    assert result.status is SyncStatus.ABORTED and result.records == ()


def test_abort_while_clearing_a_busy_meter_does_not_retry() -> None:
    sync = RacpSync(5, TIMEOUT)
    sync.start(0.0)
    sync.write_failed(0x80, 0.1)
    assert sync.abort(0.2) == Wait(10.1)
    result = finished(sync.indication(ABORT_OK, 0.3))
    assert result.status is SyncStatus.ABORTED


def test_abort_write_failing_finishes_with_the_stop_status() -> None:
    sync = RacpSync(5, TIMEOUT)
    sync.start(0.0)
    sync.abort(1.0)
    assert finished(sync.write_failed(0x0E, 1.1)).status is SyncStatus.ABORTED


# --- timeouts (injected monotonic time) ---------------------------------------------------------


def test_inactivity_timeout_aborts_and_fails() -> None:
    sync = RacpSync(5, TIMEOUT)
    assert sync.start(0.0) == Write(racp.report_from(5), 10.0)
    assert sync.tick(5.0) == Wait(10.0)  # early tick: nothing happens
    assert sync.measurement(gm(5), 8.0) == Wait(18.0)  # activity restarts the timeout
    expect_write(sync.tick(18.0), racp.abort())
    result = finished(sync.indication(ABORT_OK, 18.5))
    assert result.status is SyncStatus.FAILED and result.reason == "timeout"
    assert seqs(result) == [5] and result.next_sequence == 5


def test_timeout_when_the_abort_is_not_answered_either() -> None:
    sync = RacpSync(5, TIMEOUT)
    sync.start(0.0)
    action = sync.tick(10.0)
    assert isinstance(action, Write)
    assert sync.tick(15.0) == Wait(20.0)
    result = finished(sync.tick(20.0))
    assert result.reason == "timeout"


def test_chatty_meter_cannot_hold_an_abort_open() -> None:
    sync = RacpSync(5, TIMEOUT)
    sync.start(0.0)
    sync.abort(1.0)  # deadline 11
    assert isinstance(sync.measurement(gm(5), 5.0), Wait)  # no extension while stopping
    result = finished(sync.measurement(gm(6), 11.0))
    assert result.status is SyncStatus.ABORTED


def test_a_meter_that_never_stops_is_bounded() -> None:
    sync = RacpSync(None, TIMEOUT, max_notifications=5)
    sync.start(0.0)
    for s in range(5):
        assert isinstance(sync.measurement(gm(s), 0.1), Wait)
    expect_write(sync.context(gc(4), 0.2), racp.abort())
    sync.measurement(gm(6), 0.3)  # in flight while stopping: no second abort
    result = finished(sync.indication(ABORT_OK, 0.4))
    assert result.status is SyncStatus.FAILED and result.reason == "too_many_notifications"
    assert result.next_sequence is None


def test_timeout_while_clearing_fails() -> None:
    sync = RacpSync(5, TIMEOUT)
    sync.start(0.0)
    sync.write_failed(0x80, 1.0)
    result = finished(sync.tick(11.0))
    assert result.reason == "timeout"


def test_silent_meter_in_the_loop() -> None:
    @dataclass
    class Silent(Meter):
        def write(self, payload: bytes) -> int | None:
            self.writes.append(payload)
            return None

    meter = Silent(stored=[1])
    result = run(RacpSync(1, TIMEOUT), meter, now=50.0)
    assert meter.writes == [racp.report_from(1), racp.abort()]
    assert result.reason == "timeout"


# --- wrap, ordering, duplicates -----------------------------------------------------------------


def test_wrap_with_a_numeric_meter_asks_for_the_wrapped_part() -> None:
    meter = Meter(stored=[65532, 65533, 65534, 65535, 0, 1])
    result = run(RacpSync(65534, TIMEOUT), meter)
    assert meter.writes == [racp.report_from(65534), racp.report_up_to(32765)]
    assert seqs(result) == [65534, 65535, 0, 1]
    assert result.next_sequence == 2
    assert result.duplicates == 0


def test_wrap_with_a_serial_meter_dedupes_the_second_answer() -> None:
    meter = Meter(stored=[65533, 65534, 65535, 0, 1], wrap_aware=True)
    result = run(RacpSync(65534, TIMEOUT), meter)
    assert seqs(result) == [65534, 65535, 0, 1]
    assert result.duplicates == 2
    assert result.next_sequence == 2


def test_meter_refusing_the_wrap_request_gets_the_rest_next_time() -> None:
    stored = [65533, 65534, 65535, 0, 1]
    result = run(RacpSync(65534, TIMEOUT), Meter(stored=stored, supports_le=False))
    assert result.complete and result.wrap_refused
    assert seqs(result) == [65534, 65535] and result.next_sequence == 0
    result = run(RacpSync(result.next_sequence, TIMEOUT), Meter(stored=stored, supports_le=False))
    assert seqs(result) == [0, 1] and result.next_sequence == 2


def test_cursor_at_65535_and_at_zero() -> None:
    stored = [65533, 65534, 65535, 0, 1]
    result = run(RacpSync(65535, TIMEOUT), Meter(stored=stored))
    assert seqs(result) == [65535, 0, 1] and result.next_sequence == 2
    meter = Meter(stored=stored)
    result = run(RacpSync(0, TIMEOUT), meter)  # ">= 0" is the whole store to a numeric meter
    assert seqs(result) == [0, 1]
    assert result.ignored_sequences == (0xFFFD, 0xFFFE, 0xFFFF)
    assert result.next_sequence == 2
    assert meter.writes == [racp.report_from(0)]


def test_no_wrap_request_when_the_meter_did_not_reach_65535() -> None:
    meter = Meter(stored=[40000, 40001])
    result = run(RacpSync(40000, TIMEOUT), meter)
    assert meter.writes == [racp.report_from(40000)]
    assert result.next_sequence == 40002


def test_next_sequence_wraps_to_zero() -> None:
    result = run(RacpSync(65534, TIMEOUT), Meter(stored=[65534, 65535]))
    assert result.next_sequence == 0


def test_out_of_order_and_duplicates() -> None:
    sync = RacpSync(10, TIMEOUT)
    sync.start(0.0)
    for s in (12, 10, 11, 11, 10):
        sync.measurement(gm(s), 1.0)
    result = finished(sync.indication(SUCCESS, 2.0))
    assert seqs(result) == [10, 11, 12]
    assert result.duplicates == 2
    assert result.sequences_seen == (12, 10, 11, 11, 10)
    assert result.next_sequence == 13


def test_same_sequence_with_another_base_time_is_not_a_duplicate() -> None:
    sync = RacpSync(None, TIMEOUT)
    sync.start(0.0)
    sync.measurement(gm(3, minutes=1), 1.0)
    sync.measurement(gm(3, minutes=2), 1.1)
    result = finished(sync.indication(SUCCESS, 2.0))
    assert [r.measurement.base_time.minute for r in result.records] == [1, 2]
    assert result.duplicates == 0


def test_report_all_orders_across_the_wrap() -> None:
    sync = RacpSync(None, TIMEOUT)
    sync.start(0.0)
    for s in (0, 65534, 1, 65535):
        sync.measurement(gm(s), 1.0)
    result = finished(sync.indication(SUCCESS, 2.0))
    assert seqs(result) == [65534, 65535, 0, 1]
    assert result.next_sequence == 2


@settings(max_examples=60, deadline=None)
@given(
    cursor=st.integers(0, 0xFFFF),
    count=st.integers(1, 40),
    seed=st.integers(0, 2**32),
    wrap_aware=st.booleans(),
)
def test_property_every_new_record_once_in_order(
    cursor: int, count: int, seed: int, wrap_aware: bool
) -> None:
    old = [(cursor - k) % 0x10000 for k in range(5, 0, -1)]
    new = [(cursor + k) % 0x10000 for k in range(count)]

    @dataclass
    class Shuffling(Meter):
        def write(self, payload: bytes) -> int | None:
            err = super().write(payload)
            # records of one answer arrive in any order, some twice; the indication stays last
            body, last = self.events[:-1], self.events[-1:]
            rng = random.Random(seed)
            body += rng.sample(body, k=min(3, len(body)))
            rng.shuffle(body)
            self.events = body + last
            return err

    result = run(RacpSync(cursor, TIMEOUT), Shuffling(stored=old + new, wrap_aware=wrap_aware))
    assert result.complete
    assert seqs(result) == new
    assert result.next_sequence == (cursor + count) % 0x10000
    assert all(r.context is not None for r in result.records)


# --- contexts and bad input ---------------------------------------------------------------------


def test_context_pairing_edge_cases() -> None:
    sync = RacpSync(None, TIMEOUT)
    sync.start(0.0)
    sync.context(gc(1, Meal.CASUAL), 0.1)  # before its measurement
    sync.measurement(gm(1, ctx=True), 0.2)
    sync.measurement(gm(2, ctx=True), 0.3)  # announces a context that never comes
    sync.measurement(gm(3), 0.4)
    sync.context(gc(9), 0.5)  # for no measurement
    result = finished(sync.indication(SUCCESS, 1.0))
    by_seq = {r.measurement.sequence_number: r for r in result.records}
    assert by_seq[1].context is not None and by_seq[1].context.meal is Meal.CASUAL
    assert by_seq[2].context is None and by_seq[3].context is None
    assert result.missing_contexts == (2,)
    assert result.orphan_contexts == (9,)


def test_malformed_notifications_are_counted_not_fatal() -> None:
    sync = RacpSync(None, TIMEOUT)
    sync.start(0.0)
    sync.measurement(gm(1)[:-1], 0.1)
    sync.context(b"\x02\x01", 0.2)
    sync.measurement(gm(2), 0.3)
    result = finished(sync.indication(SUCCESS, 1.0))
    assert seqs(result) == [2]
    assert [e.characteristic for e in result.malformed] == [
        "glucose_measurement", "glucose_context"
    ]


def test_malformed_indication_fails() -> None:
    sync = RacpSync(None, TIMEOUT)
    sync.start(0.0)
    result = finished(sync.indication(b"\x06\x00\x01", 1.0))
    assert result.status is SyncStatus.FAILED and result.reason == "malformed_indication"
    assert len(result.malformed) == 1


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (RacpResponse.OPERATOR_NOT_SUPPORTED, "operator_not_supported"),
        (RacpResponse.PROCEDURE_NOT_COMPLETED, "procedure_not_completed"),
        (RacpResponse.INVALID_OPERAND, "invalid_operand"),
    ],
)
def test_error_responses_fail(code: RacpResponse, reason: str) -> None:
    sync = RacpSync(3, TIMEOUT)
    sync.start(0.0)
    sync.measurement(gm(3), 0.5)
    result = finished(
        sync.indication(racp.encode_response_code(RacpOpcode.REPORT_STORED_RECORDS, code), 1.0)
    )
    assert result.status is SyncStatus.FAILED and result.reason == reason
    assert result.next_sequence == 3 and seqs(result) == [3]


def test_a_failure_of_the_wrap_request_is_still_a_failure() -> None:
    sync = RacpSync(65535, TIMEOUT)
    sync.start(0.0)
    sync.measurement(gm(65535), 0.1)
    expect_write(sync.indication(SUCCESS, 0.2), racp.report_up_to(32766))
    result = finished(sync.indication(racp.encode_response_code(
        RacpOpcode.REPORT_STORED_RECORDS, RacpResponse.PROCEDURE_NOT_COMPLETED), 0.3))
    assert result.status is SyncStatus.FAILED and result.reason == "procedure_not_completed"
    assert result.next_sequence == 65535


def test_stray_abort_answer_while_waiting_is_ignored() -> None:
    sync = RacpSync(None, TIMEOUT)
    sync.start(0.0)
    assert isinstance(sync.indication(ABORT_OK, 0.5), Wait)
    assert finished(sync.indication(SUCCESS, 1.0)).complete


# --- misuse -------------------------------------------------------------------------------------


def test_usage_errors_and_finished_is_sticky() -> None:
    sync = RacpSync(None, TIMEOUT)
    with pytest.raises(RacpUsageError):
        sync.measurement(gm(1), 0.0)
    sync.start(0.0)
    with pytest.raises(RacpUsageError):
        sync.start(0.0)
    done = sync.indication(SUCCESS, 1.0)
    assert isinstance(done, Finished)
    assert sync.measurement(gm(1), 2.0) == done
    assert sync.tick(99.0) == done
    with pytest.raises(RacpUsageError):
        sync.start(3.0)
    with pytest.raises(ValueError, match="uint16"):
        RacpSync(0x10000, TIMEOUT)
    with pytest.raises(ValueError, match="positive"):
        RacpSync(1, 0)
