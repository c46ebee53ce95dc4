"""Glucose session: on every connection, a RACP sync from the stored cursor.

On connect: bond if the link needs it (bleak's ``pair`` is a no-op for a bonded device; BlueZ
re-encrypts the link itself), read Current Time (0x2A2B, when offered) for the meter's clock
offset, read Glucose Feature, enable notifications on 0x2A18 (+0x2A34) and indications on the
RACP 0x2A52, then sync:

* first sync (no cursor): report all records;
* later syncs: report records with sequence >= the cursor's sequence — the record *at* the
  cursor comes back too and proves the meter still numbers as before (same base time). If
  it is missing or differs, or nothing comes back (the meter's highest number is below the
  cursor), the meter restarted its numbering: report all. Stable reading ids make the
  re-fetch duplicate-free, and nothing is skipped;
* ATT 0x80 (procedure already in progress): abort, then retry (bounded);
* no progress for ``racp_timeout_s``: abort, :class:`RacpError`; the supervisor reconnects
  later and the cursor (unchanged) makes the next sync fetch the same records again.

The records and the new cursor go to intake in ONE call (one vault transaction).

Choice: after the sync the session stays connected and listens. A meter that pushes a new
measurement (a notification outside a RACP procedure) triggers a new sync from the cursor
rather than storing the pushed record directly, so the cursor logic stays in one place. A
meter that drops the link (most do after a transfer) is re-synced on the next connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any

from edge.ble import codec
from edge.ble.errors import BleOperationError, att_code
from edge.ble.link import Link, cancel_and_wait, resolve, with_timeout
from edge.ble.ports import CursorLike, DeviceRegistry, IntakeSink
from edge.ble.profiles import (
    CURRENT_TIME,
    GLUCOSE_CONTEXT,
    GLUCOSE_FEATURE,
    GLUCOSE_MEASUREMENT,
    RACP,
)
from edge.clock import Clock
from edge.errors import MalformedPayload, PairingRefused, RacpError
from edge.gatt.racp import RacpOpcode, RacpResponse
from edge.log import get_logger
from edge.readings import GlucoseReading

log = get_logger("edge.ble.glucose")

#: sequence numbers are uint16
SEQ_MAX = 0xFFFF
#: how often a RACP request refused with ATT 0x80 is aborted and retried
BUSY_RETRIES = 3

_REPORT = RacpOpcode.REPORT_STORED_RECORDS
_ABORT = RacpOpcode.ABORT_OPERATION


def parse_response(value: bytes) -> tuple[int, int] | None:
    """``(request opcode, response code)`` of a RACP response indication, else None."""
    try:
        msg = codec.decode_racp(value)
    except MalformedPayload:
        return None
    if isinstance(msg, codec.RacpResponseCode):
        return int(msg.request_opcode), int(msg.response)
    return None


@dataclass
class Transfer:
    """What one RACP report procedure delivered, in arrival order."""

    measurements: list[tuple[codec.GlucoseMeasurement, datetime]] = field(default_factory=list)
    contexts: dict[int, codec.GlucoseContext] = field(default_factory=dict)
    malformed: int = 0

    def by_sequence(self, seq: int) -> codec.GlucoseMeasurement | None:
        for m, _ in self.measurements:
            if m.sequence_number == seq:
                return m
        return None


def _response_name(code: int) -> str:
    try:
        return RacpResponse(code).name.lower()
    except ValueError:
        return str(code)


class GlucoseSession:
    """One connection to a glucose meter. :meth:`run` syncs, then listens until the link drops
    (raising :class:`BleOperationError` ``link_lost``) or a sync fails (:class:`RacpError`)."""

    def __init__(
        self,
        link: Link,
        *,
        address: str,
        patient: str,
        sink: IntakeSink,
        registry: DeviceRegistry,
        clock: Clock,
        local_tz: tzinfo,
        racp_timeout_s: float,
        on_syncing: Callable[[], None] = lambda: None,
        on_synced: Callable[[], None] = lambda: None,
        on_reading: Callable[[int], None] = lambda n: None,
        on_malformed: Callable[[int], None] = lambda n: None,
    ) -> None:
        self._link = link
        self._client = link.client
        self._address = address
        self._patient = patient
        self._sink = sink
        self._registry = registry
        self._clock = clock
        self._local_tz = local_tz
        self._timeout = racp_timeout_s
        self._on_syncing = on_syncing
        self._on_synced = on_synced
        self._on_reading = on_reading
        self._on_malformed = on_malformed
        self._transfer: Transfer | None = None
        self._responses: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
        self._progress = asyncio.Event()
        self._pushed = asyncio.Event()
        self._clock_offset_s = 0
        #: completed syncs in this session
        self.syncs = 0
        #: whether the last sync found the meter's numbering restarted
        self.reset_detected = False

    # --- notifications (bleak callbacks, synchronous) -----------------------------------------

    def _on_measurement(self, _char: Any, data: bytearray) -> None:
        received_at = self._clock.now()
        transfer = self._transfer
        if transfer is None:
            # Pushed by the meter outside a procedure: fetch it through RACP from the cursor.
            self._pushed.set()
            return
        self._progress.set()
        try:
            m = codec.decode_glucose_measurement(bytes(data))
        except MalformedPayload:
            transfer.malformed += 1
            return
        transfer.measurements.append((m, received_at))

    def _on_context(self, _char: Any, data: bytearray) -> None:
        transfer = self._transfer
        if transfer is None:
            return
        self._progress.set()
        try:
            c = codec.decode_glucose_context(bytes(data))
        except MalformedPayload:
            transfer.malformed += 1
            return
        transfer.contexts[c.sequence_number] = c

    def _on_racp(self, _char: Any, data: bytearray) -> None:
        parsed = parse_response(bytes(data))
        if parsed is not None:
            self._responses.put_nowait(parsed)
            self._progress.set()

    # --- the session --------------------------------------------------------------------------

    def _has(self, uuid: str) -> bool:
        try:
            return self._client.services.get_characteristic(uuid) is not None
        except Exception:
            return False

    async def run(self) -> None:
        """Prepare the link, sync, then listen for pushed records until the link drops."""
        await self._prepare()
        await self._sync()
        while True:
            pushed = asyncio.ensure_future(self._pushed.wait())
            dropped = asyncio.ensure_future(self._link.wait_dropped())
            waits: set[asyncio.Future[Any]] = {pushed, dropped}
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                await cancel_and_wait(pushed)
                await cancel_and_wait(dropped)
            if self._link.dropped.is_set():
                raise BleOperationError("listen", "link_lost")
            self._pushed.clear()
            await self._sync()

    async def _prepare(self) -> None:
        try:
            await self._link.call("pair", self._client.pair())
        except BleOperationError as exc:
            if exc.reason == "link_lost":
                raise
            raise PairingRefused("the meter refused to bond") from exc
        cursor: CursorLike | None = await resolve(self._registry.cursor(self._address))
        self._clock_offset_s = cursor.clock_offset_s if cursor else 0
        if self._has(CURRENT_TIME):
            raw = await self._link.call("read_time", self._client.read_gatt_char(CURRENT_TIME))
            try:
                meter_now = codec.decode_current_time(bytes(raw))
            except MalformedPayload:
                await self._malformed(1)
            else:
                gateway_now = self._clock.now().astimezone(self._local_tz).replace(tzinfo=None)
                self._clock_offset_s = int(codec.clock_offset_seconds(meter_now, gateway_now))
                log.info("ble.meter_clock", address=self._address,
                         offset_s=self._clock_offset_s)
        if self._has(GLUCOSE_FEATURE):
            raw = await self._link.call(
                "read_feature", self._client.read_gatt_char(GLUCOSE_FEATURE)
            )
            try:
                codec.decode_glucose_feature(bytes(raw))
            except MalformedPayload:
                await self._malformed(1)
        await self._link.call(
            "subscribe", self._client.start_notify(GLUCOSE_MEASUREMENT, self._on_measurement)
        )
        if self._has(GLUCOSE_CONTEXT):
            await self._link.call(
                "subscribe", self._client.start_notify(GLUCOSE_CONTEXT, self._on_context)
            )
        await self._link.call("subscribe", self._client.start_notify(RACP, self._on_racp))

    async def _sync(self) -> None:
        self._on_syncing()
        cursor: CursorLike | None = await resolve(self._registry.cursor(self._address))
        if cursor is None or cursor.last_sequence >= SEQ_MAX:
            # First sync, or the cursor sits at the top of the uint16 range where ">=" cannot
            # reach the wrapped numbers: take everything (ids make it duplicate-free).
            transfer = await self._report(codec.report_all())
            readings = self._readings(transfer, after=None)
        else:
            transfer = await self._report(codec.report_from(cursor.last_sequence))
            at_cursor = transfer.by_sequence(cursor.last_sequence)
            same = at_cursor is not None and (
                cursor.last_device_time is None
                or at_cursor.device_time == cursor.last_device_time
            )
            if same:
                self.reset_detected = False
                readings = self._readings(transfer, after=cursor.last_sequence)
            else:
                self.reset_detected = True
                log.warning("ble.meter_numbering_restarted", address=self._address)
                transfer = await self._report(codec.report_all())
                readings = self._readings(transfer, after=None)
        if transfer.malformed:
            await self._malformed(transfer.malformed)
        await self._commit(transfer, readings, cursor)
        self.syncs += 1
        self._on_synced()

    def _readings(self, transfer: Transfer, *, after: int | None) -> list[GlucoseReading]:
        readings = []
        for m, received_at in transfer.measurements:
            if after is not None and m.sequence_number == after:
                continue  # the cursor's own record: already stored
            readings.append(
                codec.glucose_reading(
                    m,
                    transfer.contexts.get(m.sequence_number),
                    device_id=self._address,
                    patient=self._patient,
                    received_at=received_at,
                    clock_offset_s=self._clock_offset_s,
                    local_tz=self._local_tz,
                )
            )
        return readings

    async def _commit(
        self, transfer: Transfer, readings: list[GlucoseReading], cursor: CursorLike | None
    ) -> None:
        if not transfer.measurements:
            return
        # The last record in arrival order: meters report in storage order, so after a wrap
        # (…65535, 0, 1) this is the newest, where max() would not be.
        last, _ = transfer.measurements[-1]
        unchanged = (
            cursor is not None
            and not readings
            and cursor.last_sequence == last.sequence_number
            and cursor.clock_offset_s == self._clock_offset_s
        )
        if unchanged:
            return
        await self._sink.submit_glucose(
            self._address,
            readings,
            last_sequence=last.sequence_number,
            last_device_time=last.device_time,
            clock_offset_s=self._clock_offset_s,
        )
        if readings:
            self._on_reading(len(readings))
        log.info("ble.glucose_synced", address=self._address, records=len(readings))

    async def _malformed(self, n: int) -> None:
        self._on_malformed(n)
        await self._sink.refuse("malformed", n)

    # --- one RACP report procedure ------------------------------------------------------------

    async def _write_racp(self, value: bytes) -> None:
        await self._link.call("racp_write", self._client.write_gatt_char(RACP, value, True))

    async def _report(self, request: bytes) -> Transfer:
        """Run one report procedure; the records it delivered (empty for "no records")."""
        for attempt in range(BUSY_RETRIES + 1):
            self._drain_responses()
            self._transfer = Transfer()
            try:
                try:
                    await self._write_racp(request)
                except BleOperationError as exc:
                    cause = exc.__cause__
                    if cause is not None and att_code(cause) == 0x80 and attempt < BUSY_RETRIES:
                        log.info("ble.racp_busy", address=self._address, attempt=attempt)
                        await self._abort()
                        continue
                    raise
                code = await self._await_response(_REPORT)
                transfer = self._transfer
            finally:
                self._transfer = None
            if code == RacpResponse.NO_RECORDS_FOUND:
                return Transfer(malformed=transfer.malformed)
            if code != RacpResponse.SUCCESS:
                raise RacpError(f"record transfer refused ({_response_name(code)})")
            return transfer
        raise RacpError("meter stayed busy (procedure already in progress)")

    def _drain_responses(self) -> None:
        while not self._responses.empty():
            self._responses.get_nowait()

    async def _await_response(self, opcode: int) -> int:
        """The response code to ``opcode``; RacpError after ``racp_timeout_s`` of silence."""
        while True:
            self._progress.clear()
            got = asyncio.ensure_future(self._responses.get())
            try:
                await self._link.call(
                    "racp", with_timeout(self._clock, self._timeout, self._progress_or(got))
                )
            except BleOperationError as exc:
                await cancel_and_wait(got)
                if exc.reason == "timeout":
                    await self._abort()
                    raise RacpError("record transfer timed out") from exc
                raise
            except TimeoutError as exc:
                await cancel_and_wait(got)
                await self._abort()
                raise RacpError("record transfer timed out") from exc
            if got.done():
                request_opcode, code = got.result()
                if request_opcode == opcode:
                    return code
                continue
            await cancel_and_wait(got)

    async def _progress_or(self, got: asyncio.Future[Any]) -> None:
        progress = asyncio.ensure_future(self._progress.wait())
        try:
            await asyncio.wait({got, progress}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(progress)

    async def _abort(self) -> None:
        """Best-effort abort; its own response (or silence) is awaited briefly."""
        try:
            await self._write_racp(codec.abort())
        except BleOperationError as exc:
            if exc.reason == "link_lost":
                raise
            return
        try:
            await with_timeout(self._clock, min(self._timeout, 5.0), self._abort_response())
        except TimeoutError:
            return

    async def _abort_response(self) -> None:
        while True:
            request_opcode, _code = await self._responses.get()
            if request_opcode == _ABORT:
                return
