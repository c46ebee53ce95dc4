"""The RACP client for "sync from cursor", as a pure state machine (no I/O, no clock).

The caller (the async BLE shell) owns the transport and the clock; it feeds the machine what
arrives and does what the machine returns. Every method takes ``now``, a monotonic time in
seconds, and returns the next :data:`Action`:

* :class:`Write` — write ``payload`` to RACP 0x2A52 (write with response), then keep waiting
  for notifications until ``deadline``;
* :class:`Wait` — keep waiting until ``deadline``;
* :class:`Finished` — done; ``result`` says what came of it (it never raises).

Call sequence::

    sync = RacpSync(next_sequence=cursor, timeout_s=30.0)   # cursor None: first sync, report all
    action = sync.start(clock.monotonic())
    while not isinstance(action, Finished):
        if isinstance(action, Write):
            try:
                await write_racp(action.payload)
            except AttProtocolError as exc:                 # e.g. 0x80 procedure in progress
                action = sync.write_failed(exc.code, clock.monotonic())
                continue
        event = await next_event(until=action.deadline)     # from the notify/indicate callbacks
        now = clock.monotonic()
        if event is None:                                   # deadline passed, nothing came
            action = sync.tick(now)
        elif event.uuid == GLUCOSE_MEASUREMENT:
            action = sync.measurement(event.data, now)
        elif event.uuid == GLUCOSE_CONTEXT:
            action = sync.context(event.data, now)
        else:                                               # RACP indication
            action = sync.indication(event.data, now)
    result = action.result     # store result.records and result.next_sequence in one transaction
    if result.reset_suspected: # the meter restarted its numbering: resync with report-all
        ...                    # RacpSync(next_sequence=None, ...) and rely on stable ids to dedupe

Notifications may arrive before a write returns; queue them and feed them after the write, in
arrival order. ``sync.abort(now)`` stops a transfer (e.g. on shutdown).

Behaviour:

* The request is ``01 03 01 <cursor>`` (≥ cursor), or ``01 01`` (all) when the cursor is None.
* Sequence numbers are uint16 and wrap. A record is new when it lies in the half of the
  sequence space starting at the cursor (serial-number arithmetic), so a meter that answers
  "≥ 0" with its whole store still yields only the new records. A meter that compares
  numerically cannot report 0, 1 … after 65535 for "≥ 65534", so when the first transfer
  reached 65535 the machine also asks for ``≤ cursor + 32767 (mod 65536)`` (a meter that
  refuses that request leaves the wrapped records to the next sync's ``≥ 0``).
* When nothing new came, it asks for the last record (``01 06``) so a meter whose newest record
  is not the one just before the cursor — a meter that restarted its numbering — is reported
  as ``reset_suspected``.
* ATT error 0x80 (procedure already in progress) on a request: write an abort, wait for its
  response, then retry; at most ``max_busy_retries`` times.
* Contexts pair with measurements by sequence number when the measurement's
  ``context_follows`` flag is set. Duplicates (same sequence number and base time) are
  dropped and counted; malformed notifications are kept in the result and counted.
* At most ``max_notifications`` notifications per sync (a meter that never stops is aborted).
* ``timeout_s`` is an inactivity timeout: every notification in a transfer restarts it. On a
  timeout the machine writes an abort and finishes as failed.
* Only a complete sync moves the cursor (``next_sequence``); after a failure the records that
  did arrive are still returned — storing them is safe because reading ids are stable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, StrEnum, auto

from edge.errors import MalformedPayload, RacpError
from edge.gatt import racp
from edge.gatt.glucose import GlucoseMeasurement, decode_glucose_measurement
from edge.gatt.glucose_context import GlucoseContext, decode_glucose_context
from edge.gatt.racp import (
    RacpNumberOfRecords,
    RacpOpcode,
    RacpResponse,
    RacpResponseCode,
    decode_racp,
)
from edge.gatt.uuids import ATT_CCCD_IMPROPERLY_CONFIGURED, ATT_PROCEDURE_ALREADY_IN_PROGRESS

SEQ_MODULO = 0x10000
#: answers that mean "this meter cannot do that request" rather than "the transfer failed"
_REFUSALS = frozenset({
    RacpResponse.OPCODE_NOT_SUPPORTED,
    RacpResponse.INVALID_OPERATOR,
    RacpResponse.OPERATOR_NOT_SUPPORTED,
    RacpResponse.INVALID_OPERAND,
    RacpResponse.OPERAND_NOT_SUPPORTED,
})
#: records within this distance after the cursor are "new" (half the sequence space)
WINDOW = 0x8000


# --- actions ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Write:
    """Write ``payload`` to RACP, then wait for events until ``deadline``."""

    payload: bytes
    deadline: float


@dataclass(frozen=True, slots=True)
class Wait:
    """Wait for events until ``deadline``, then call :meth:`RacpSync.tick`."""

    deadline: float


@dataclass(frozen=True, slots=True)
class Finished:
    """The sync is over."""

    result: SyncResult


Action = Write | Wait | Finished


# --- result -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GlucoseRecord:
    """A measurement with its context, when one came."""

    measurement: GlucoseMeasurement
    context: GlucoseContext | None = None


class SyncStatus(StrEnum):
    COMPLETE = "complete"
    ABORTED = "aborted"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class SyncResult:
    """What a sync produced and what it saw."""

    status: SyncStatus
    #: a stable word when not complete: ``timeout``, ``procedure_already_in_progress``,
    #: ``cccd_improperly_configured``, ``att_error_0xNN``, ``malformed_indication``,
    #: ``too_many_notifications``, an RACP response name (``operator_not_supported`` …), or
    #: ``aborted``
    reason: str | None
    #: new records, oldest first (also on failure: what arrived before it)
    records: tuple[GlucoseRecord, ...]
    #: the cursor the sync started from (None: report all)
    requested_from: int | None
    #: the cursor to store with the records; moves only when the sync is complete
    next_sequence: int | None
    #: newest sequence number the meter showed: the newest new record, else the probed last one
    meter_last_sequence: int | None
    #: the probe found the meter's newest record is not the one just before the cursor
    reset_suspected: bool
    #: every valid measurement's sequence number, in arrival order (incl. ignored, duplicates)
    sequences_seen: tuple[int, ...]
    #: measurements outside the window after the cursor (already stored or from a reset meter)
    ignored_sequences: tuple[int, ...]
    duplicates: int
    malformed: tuple[MalformedPayload, ...]
    #: measurements that announced a context that never came
    missing_contexts: tuple[int, ...]
    #: contexts for no measurement that arrived
    orphan_contexts: tuple[int, ...]
    busy_retries: int
    #: the meter answered "no records found" to the main request
    no_records: bool
    #: the meter refused the "≤" request for records after a wrap (they come next sync)
    wrap_refused: bool = False

    @property
    def complete(self) -> bool:
        return self.status is SyncStatus.COMPLETE

    def raise_for_status(self) -> None:
        """Raise :class:`RacpError` unless the sync completed."""
        if self.status is not SyncStatus.COMPLETE:
            raise RacpError(f"glucose record transfer {self.status.value}: {self.reason}")


# --- the machine ------------------------------------------------------------------------------


class State(Enum):
    IDLE = auto()
    #: a report request is written; records and the final indication are expected
    WAITING = auto()
    #: the meter was busy: an abort is written; the request is retried on its response
    CLEARING = auto()
    #: an abort is written because of a timeout or the caller; finishing on its response
    STOPPING = auto()
    FINISHED = auto()


class Phase(Enum):
    #: ≥ cursor, or all records on a first sync
    MAIN = auto()
    #: ≤ cursor + 32767 (mod 65536): records after a numeric wrap
    WRAP = auto()
    #: the last record, to compare with the cursor
    PROBE = auto()


class Event(Enum):
    START = auto()
    WRITE_FAILED = auto()
    MEASUREMENT = auto()
    CONTEXT = auto()
    INDICATION = auto()
    TICK = auto()
    ABORT = auto()


class RacpUsageError(RuntimeError):
    """The machine was driven out of order (a bug in the caller, not in the meter)."""


_Handler = Callable[["RacpSync", float, object], Action]


class RacpSync:
    """Pure RACP "sync from cursor" client. See the module docstring for the call sequence."""

    def __init__(
        self,
        next_sequence: int | None,
        timeout_s: float,
        *,
        max_busy_retries: int = 3,
        check_reset: bool = True,
        max_notifications: int = 3 * SEQ_MODULO,
    ) -> None:
        if next_sequence is not None and not 0 <= next_sequence < SEQ_MODULO:
            raise ValueError("a sequence number is uint16")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self._cursor = next_sequence
        self._timeout = timeout_s
        self._max_busy = max_busy_retries
        self._check_reset = check_reset
        self._max_notifications = max_notifications
        self._notifications = 0
        self.state = State.IDLE
        self.phase = Phase.MAIN
        self.deadline = 0.0
        self._request = b""
        self._stop_status = SyncStatus.FAILED
        self._stop_reason = ""
        self._result: SyncResult | None = None
        # what arrived
        self._taken: list[GlucoseMeasurement] = []
        self._keys: set[tuple[int, object]] = set()
        self._contexts: dict[int, GlucoseContext] = {}
        self._seen: list[int] = []
        self._ignored: list[int] = []
        self._duplicates = 0
        self._malformed: list[MalformedPayload] = []
        self._busy = 0
        self._main_saw_top = False
        self._no_records = False
        self._probe_last: int | None = None
        self._probed = False
        self._wrap_refused = False

    # --- public API: each returns the next action ---

    @property
    def result(self) -> SyncResult | None:
        """The result once finished, else None."""
        return self._result

    def start(self, now: float) -> Action:
        """Begin: returns the first request to write."""
        return self._dispatch(Event.START, now, None)

    def write_failed(self, att_error: int, now: float) -> Action:
        """The last :class:`Write` failed with ATT error ``att_error``."""
        return self._dispatch(Event.WRITE_FAILED, now, att_error)

    def measurement(self, data: bytes | bytearray, now: float) -> Action:
        """A Glucose Measurement 0x2A18 notification arrived."""
        return self._dispatch(Event.MEASUREMENT, now, data)

    def context(self, data: bytes | bytearray, now: float) -> Action:
        """A Glucose Measurement Context 0x2A34 notification arrived."""
        return self._dispatch(Event.CONTEXT, now, data)

    def indication(self, data: bytes | bytearray, now: float) -> Action:
        """An RACP 0x2A52 indication arrived."""
        return self._dispatch(Event.INDICATION, now, data)

    def tick(self, now: float) -> Action:
        """The wait ran out (or the caller polls): handles the timeout."""
        return self._dispatch(Event.TICK, now, None)

    def abort(self, now: float) -> Action:
        """Stop the transfer: writes an abort when a request is in progress."""
        return self._dispatch(Event.ABORT, now, None)

    # --- dispatch ---

    def _dispatch(self, event: Event, now: float, arg: object) -> Action:
        if self.state is State.FINISHED:
            if event is Event.START:
                raise RacpUsageError("this sync has finished; make a new one")
            assert self._result is not None
            return Finished(self._result)
        handler = _TABLE.get((self.state, event))
        if handler is None:
            raise RacpUsageError(f"{event.name} is not valid in state {self.state.name}")
        action = handler(self, now, arg)
        if (
            isinstance(action, Wait)
            and self.state in (State.CLEARING, State.STOPPING)
            and now >= self.deadline
        ):
            # A chatty meter must not hold an abort open past its deadline.
            return self._on_tick(now, None)
        return action

    # --- handlers ---

    def _on_start(self, now: float, _: object) -> Action:
        self.phase = Phase.MAIN
        if self._cursor is None:
            return self._send(racp.report_all(), now)
        return self._send(racp.report_from(self._cursor), now)

    def _on_write_failed(self, now: float, arg: object) -> Action:
        assert isinstance(arg, int)
        code = arg
        if self.state is State.STOPPING:
            return self._finish(self._stop_status, self._stop_reason)
        if self.state is State.CLEARING:
            return self._finish(SyncStatus.FAILED, "procedure_already_in_progress")
        if code == ATT_PROCEDURE_ALREADY_IN_PROGRESS:
            self._busy += 1
            if self._busy > self._max_busy:
                return self._finish(SyncStatus.FAILED, "procedure_already_in_progress")
            self.state = State.CLEARING
            return self._write(racp.abort(), now)
        if code == ATT_CCCD_IMPROPERLY_CONFIGURED:
            return self._finish(SyncStatus.FAILED, "cccd_improperly_configured")
        return self._finish(SyncStatus.FAILED, f"att_error_0x{code & 0xFF:02x}")

    def _on_measurement(self, now: float, arg: object) -> Action:
        if self._too_many():
            return self._stop(SyncStatus.FAILED, "too_many_notifications", now)
        try:
            m = decode_glucose_measurement(arg)  # type: ignore[arg-type]
        except MalformedPayload as exc:
            self._malformed.append(exc)
            return self._keep_waiting(now)
        seq = m.sequence_number
        self._seen.append(seq)
        if self.phase is Phase.PROBE:
            self._probe_last = seq
        elif not self._in_window(seq):
            self._ignored.append(seq)
        elif (seq, m.base_time) in self._keys:
            self._duplicates += 1
        else:
            self._keys.add((seq, m.base_time))
            self._taken.append(m)
        if self.phase is Phase.MAIN and seq == SEQ_MODULO - 1:
            self._main_saw_top = True
        return self._keep_waiting(now)

    def _on_context(self, now: float, arg: object) -> Action:
        if self._too_many():
            return self._stop(SyncStatus.FAILED, "too_many_notifications", now)
        try:
            c = decode_glucose_context(arg)  # type: ignore[arg-type]
        except MalformedPayload as exc:
            self._malformed.append(exc)
            return self._keep_waiting(now)
        # The first context for a sequence number wins, like the first measurement.
        self._contexts.setdefault(c.sequence_number, c)
        return self._keep_waiting(now)

    def _on_indication(self, now: float, arg: object) -> Action:
        try:
            msg = decode_racp(arg)  # type: ignore[arg-type]
        except MalformedPayload as exc:
            self._malformed.append(exc)
            if self.state is State.STOPPING:
                return self._finish(self._stop_status, self._stop_reason)
            return self._finish(SyncStatus.FAILED, "malformed_indication")
        if isinstance(msg, RacpNumberOfRecords) or not isinstance(msg, RacpResponseCode):
            return Wait(self.deadline)
        if self.state is State.WAITING:
            if msg.request_opcode is not RacpOpcode.REPORT_STORED_RECORDS:
                return Wait(self.deadline)  # a late answer to an earlier abort
            return self._phase_done(msg.response, now)
        if msg.request_opcode is not RacpOpcode.ABORT_OPERATION:
            return Wait(self.deadline)  # the aborted procedure's own last word
        if self.state is State.CLEARING:
            # Whatever the abort's outcome, retry; the busy bound stops a loop.
            self.state = State.WAITING
            return self._write(self._request, now)
        return self._finish(self._stop_status, self._stop_reason)

    def _on_tick(self, now: float, _: object) -> Action:
        if now < self.deadline:
            return Wait(self.deadline)
        if self.state is State.WAITING:
            return self._stop(SyncStatus.FAILED, "timeout", now)
        if self.state is State.CLEARING:
            return self._finish(SyncStatus.FAILED, "timeout")
        return self._finish(self._stop_status, self._stop_reason)

    def _on_abort(self, now: float, _: object) -> Action:
        if self.state is State.IDLE:
            return self._finish(SyncStatus.ABORTED, "aborted")
        if self.state is State.WAITING:
            return self._stop(SyncStatus.ABORTED, "aborted", now)
        # An abort is already written; finish as aborted on its response.
        if self.state is State.CLEARING:
            self.state = State.STOPPING
            self._stop_status, self._stop_reason = SyncStatus.ABORTED, "aborted"
        return Wait(self.deadline)

    # --- helpers ---

    def _too_many(self) -> bool:
        """Bound a meter that never stops sending (only while a request is in progress)."""
        self._notifications += 1
        return self.state is State.WAITING and self._notifications > self._max_notifications

    def _in_window(self, seq: int) -> bool:
        return self._cursor is None or (seq - self._cursor) % SEQ_MODULO < WINDOW

    def _keep_waiting(self, now: float) -> Action:
        if self.state is State.WAITING:
            self.deadline = now + self._timeout
        return Wait(self.deadline)

    def _write(self, payload: bytes, now: float) -> Action:
        self.deadline = now + self._timeout
        return Write(payload, self.deadline)

    def _send(self, request: bytes, now: float) -> Action:
        self._request = request
        self.state = State.WAITING
        return self._write(request, now)

    def _stop(self, status: SyncStatus, reason: str, now: float) -> Action:
        self.state = State.STOPPING
        self._stop_status, self._stop_reason = status, reason
        return self._write(racp.abort(), now)

    def _phase_done(self, response: RacpResponse, now: float) -> Action:
        ok = response in (RacpResponse.SUCCESS, RacpResponse.NO_RECORDS_FOUND)
        if self.phase is Phase.PROBE:
            self._probed = ok
            return self._finish(SyncStatus.COMPLETE, None)
        if not ok and self.phase is Phase.WRAP and response in _REFUSALS:
            # A meter without "≤" must not fail every sync: the cursor moves past 65535 and
            # the next sync's "≥ 0" (filtered by the window) brings the wrapped records.
            self._wrap_refused = True
        elif not ok:
            return self._finish(SyncStatus.FAILED, response.label)
        assert self._cursor is not None or self.phase is Phase.MAIN
        if self.phase is Phase.MAIN:
            self._no_records = response is RacpResponse.NO_RECORDS_FOUND
            if self._cursor is not None and self._main_saw_top and self._window_wraps():
                self.phase = Phase.WRAP
                return self._send(racp.report_up_to(self._window_end()), now)
        if self._cursor is not None and not self._taken and self._check_reset:
            self.phase = Phase.PROBE
            return self._send(racp.report_last(), now)
        return self._finish(SyncStatus.COMPLETE, None)

    def _window_end(self) -> int:
        assert self._cursor is not None
        return (self._cursor + WINDOW - 1) % SEQ_MODULO

    def _window_wraps(self) -> bool:
        assert self._cursor is not None
        return self._cursor + WINDOW - 1 >= SEQ_MODULO

    def _origin(self) -> int:
        """The sequence number records are ordered from (oldest first)."""
        if self._cursor is not None:
            return self._cursor
        seqs = sorted({m.sequence_number for m in self._taken})
        if not seqs:
            return 0
        # Records cover an arc of the sequence circle; the oldest follows the widest gap.
        gaps = [
            ((seqs[(i + 1) % len(seqs)] - s) % SEQ_MODULO or SEQ_MODULO, i)
            for i, s in enumerate(seqs)
        ]
        _, before = max(gaps)
        return seqs[(before + 1) % len(seqs)]

    def _finish(self, status: SyncStatus, reason: str | None) -> Action:
        origin = self._origin()

        def age(m: GlucoseMeasurement) -> int:
            return (m.sequence_number - origin) % SEQ_MODULO

        taken = sorted(self._taken, key=age)  # stable: arrival order breaks ties
        records: list[GlucoseRecord] = []
        missing: list[int] = []
        paired: set[int] = set()
        for m in taken:
            ctx = self._contexts.get(m.sequence_number) if m.context_follows else None
            if m.context_follows and ctx is None:
                missing.append(m.sequence_number)
            if ctx is not None:
                paired.add(m.sequence_number)
            records.append(GlucoseRecord(m, ctx))
        newest = taken[-1].sequence_number if taken else None
        complete = status is SyncStatus.COMPLETE
        if complete and newest is not None:
            next_sequence: int | None = (newest + 1) % SEQ_MODULO
        else:
            next_sequence = self._cursor
        reset = (
            self._probed
            and self._cursor is not None
            and self._probe_last is not None
            and self._probe_last != (self._cursor - 1) % SEQ_MODULO
        )
        self._result = SyncResult(
            status=status,
            reason=reason,
            records=tuple(records),
            requested_from=self._cursor,
            next_sequence=next_sequence,
            meter_last_sequence=newest if newest is not None else self._probe_last,
            reset_suspected=reset,
            sequences_seen=tuple(self._seen),
            ignored_sequences=tuple(self._ignored),
            duplicates=self._duplicates,
            malformed=tuple(self._malformed),
            missing_contexts=tuple(missing),
            orphan_contexts=tuple(sorted(set(self._contexts) - paired - set(self._seen))),
            busy_retries=self._busy,
            no_records=self._no_records,
            wrap_refused=self._wrap_refused,
        )
        self.state = State.FINISHED
        return Finished(self._result)


_TABLE: dict[tuple[State, Event], _Handler] = {
    (State.IDLE, Event.START): RacpSync._on_start,
    (State.IDLE, Event.ABORT): RacpSync._on_abort,
    **{
        (state, event): handler
        for state in (State.WAITING, State.CLEARING, State.STOPPING)
        for event, handler in (
            (Event.WRITE_FAILED, RacpSync._on_write_failed),
            (Event.MEASUREMENT, RacpSync._on_measurement),
            (Event.CONTEXT, RacpSync._on_context),
            (Event.INDICATION, RacpSync._on_indication),
            (Event.TICK, RacpSync._on_tick),
            (Event.ABORT, RacpSync._on_abort),
        )
    },
}
