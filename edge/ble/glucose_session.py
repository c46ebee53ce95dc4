"""Glucose session: on every connection, a RACP sync from the stored cursor.

On connect: bond if the link needs it (bleak's ``pair`` is a no-op for a bonded device; BlueZ
re-encrypts the link itself), read Current Time (0x2A2B, when offered) for the meter's clock
offset, read Glucose Feature, enable notifications on 0x2A18 (+0x2A34) and indications on the
RACP 0x2A52, then sync:

* first sync (no cursor): report all records;
* later syncs: report records with sequence >= the cursor's sequence (the last one stored) —
  the record *at* the cursor comes back too and proves the meter still numbers as before
  (same device time). If it is missing or differs, or the machine's probe finds the meter's
  newest number below the cursor, the meter restarted its numbering: report all. Stable
  reading ids (sequence number + base time) make the re-fetch duplicate-free, and nothing is
  skipped;
* ATT 0x80 (procedure already in progress): abort, then retry (bounded);
* no progress for ``racp_timeout_s``, the meter ending the report early ("procedure not
  completed") or the link going mid-transfer: what arrived is kept — stored, and the cursor
  moved to its newest record when the records came oldest first
  (:func:`edge.ble.resume.resume_point`) — then :class:`RacpError` (or the link error); the
  supervisor reconnects after its capped backoff (restarted from its base when the cursor
  moved) and the next sync resumes from the cursor. A meter that always stops after five
  records delivers all of them, a few per attempt;
* a record that cannot become a reading (a time that leaves the calendar once corrected, any
  decode or arithmetic error) is a counted refusal of that record; the sync goes on and the
  cursor moves past it.

The RACP protocol itself (requests, wrap, busy retries, timeouts, context pairing) is the pure
:class:`edge.gatt.racp_client.RacpSync`; this module only drives it with bleak and the clock.

The records and the new cursor go to intake in ONE call (one vault transaction). The RACP
transfer itself is driven by :func:`edge.ble.racp_transfer.run_transfer`.

Choice: after the sync the session stays connected and listens, re-syncing from the cursor
when the meter pushes a measurement (a notification outside a RACP procedure: the pushed record
is fetched through RACP rather than stored directly, so the cursor logic stays in one place)
and every ``poll_s`` while connected (meters that store new records silently). A meter that
drops the link (most do after a transfer) is re-synced on its next connection, which the
supervisor makes once the meter advertises again.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from datetime import datetime, tzinfo

from bleak.args.bluez import BlueZNotifyArgs
from bleak.backends.characteristic import BleakGATTCharacteristic

from edge.ble.errors import BleOperationError
from edge.ble.link import Link, cancel_and_wait
from edge.ble.ports import CursorLike, DeviceRegistry, IntakeSink
from edge.ble.profiles import (
    CURRENT_TIME,
    GLUCOSE_CONTEXT,
    GLUCOSE_FEATURE,
    GLUCOSE_MEASUREMENT,
    RACP,
)
from edge.ble.racp_transfer import Event, Transfer, run_transfer
from edge.ble.resume import resume_point
from edge.clock import Clock
from edge.errors import MalformedPayload, PairingRefused, Rejected
from edge.gatt.current_time import decode_current_time
from edge.gatt.glucose_feature import decode_glucose_feature
from edge.gatt.racp_client import GlucoseRecord, SyncResult
from edge.gatt.to_reading import clock_offset_seconds, glucose_reading
from edge.log import get_logger
from edge.readings import GlucoseReading

log = get_logger("edge.ble.glucose")

#: how often a RACP request refused with ATT 0x80 is aborted and retried
BUSY_RETRIES = 3
MALFORMED = "malformed"


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
        poll_s: float = 60.0,
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
        self._poll_s = poll_s
        self._on_syncing = on_syncing
        self._on_synced = on_synced
        self._on_reading = on_reading
        self._on_malformed = on_malformed
        self._events: asyncio.Queue[Event] | None = None
        self._pushed = asyncio.Event()
        self._clock_offset_s = 0
        #: completed syncs in this session
        self.syncs = 0
        #: whether the last sync found the meter's numbering restarted
        self.reset_detected = False
        #: restarts of the meter's numbering detected in this session
        self.resets = 0
        #: transfers that ended early but moved the cursor (progress kept)
        self.advanced = 0

    # --- notifications (bleak callbacks, synchronous) -----------------------------------------

    def _on_measurement(self, _char: BleakGATTCharacteristic, data: bytearray) -> None:
        if self._events is None:
            # Pushed by the meter outside a procedure: fetch it through RACP from the cursor.
            self._pushed.set()
            return
        self._events.put_nowait((GLUCOSE_MEASUREMENT, bytes(data), self._clock.now()))

    def _on_context(self, _char: BleakGATTCharacteristic, data: bytearray) -> None:
        if self._events is not None:
            self._events.put_nowait((GLUCOSE_CONTEXT, bytes(data), self._clock.now()))

    def _on_racp(self, _char: BleakGATTCharacteristic, data: bytearray) -> None:
        if self._events is not None:
            self._events.put_nowait((RACP, bytes(data), self._clock.now()))

    # --- the session --------------------------------------------------------------------------

    def _has(self, uuid: str) -> bool:
        try:
            return self._client.services.get_characteristic(uuid) is not None
        except Exception:
            return False

    async def run(self) -> None:
        """Prepare the link and sync; then re-sync on pushed records and every ``poll_s``
        until the link drops (raises ``link_lost``)."""
        await self._prepare()
        await self._sync()
        while True:
            pushed = asyncio.ensure_future(self._pushed.wait())
            dropped = asyncio.ensure_future(self._link.wait_dropped())
            poll = asyncio.ensure_future(self._clock.sleep(self._poll_s))
            try:
                await asyncio.wait((pushed, dropped, poll), return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in (pushed, dropped, poll):
                    await cancel_and_wait(w)
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
        cursor: CursorLike | None = await self._registry.cursor(self._address)
        self._clock_offset_s = cursor.clock_offset_s if cursor else 0
        if self._has(CURRENT_TIME):
            raw = await self._link.call("read_time", self._client.read_gatt_char(CURRENT_TIME))
            try:
                meter_now = decode_current_time(bytes(raw)).exact_time
            except MalformedPayload:
                await self._malformed(1)
            else:
                gateway_now = self._clock.now().astimezone(self._local_tz).replace(tzinfo=None)
                self._clock_offset_s = clock_offset_seconds(meter_now, gateway_now)
                log.info("ble.meter_clock", address=self._address,
                         offset_s=self._clock_offset_s)
        if self._has(GLUCOSE_FEATURE):
            raw = await self._link.call(
                "read_feature", self._client.read_gatt_char(GLUCOSE_FEATURE)
            )
            try:
                decode_glucose_feature(bytes(raw))
            except MalformedPayload:
                await self._malformed(1)
        # StartNotify for everything (bleak 3's default, pinned here): with AcquireNotify each
        # characteristic gets its own socket and the RACP completion, which always travels over
        # D-Bus, could overtake the last records.
        ordered: BlueZNotifyArgs = {"use_start_notify": True}
        await self._link.call(
            "subscribe",
            self._client.start_notify(GLUCOSE_MEASUREMENT, self._on_measurement, bluez=ordered),
        )
        if self._has(GLUCOSE_CONTEXT):
            await self._link.call(
                "subscribe",
                self._client.start_notify(GLUCOSE_CONTEXT, self._on_context, bluez=ordered),
            )
        await self._link.call(
            "subscribe", self._client.start_notify(RACP, self._on_racp, bluez=ordered)
        )

    async def _sync(self) -> None:
        """One sync from the cursor (see the module docstring); commits records + cursor."""
        self._on_syncing()
        cursor: CursorLike | None = await self._registry.cursor(self._address)
        # ">= the cursor's own number": its record comes back and vouches for the numbering.
        t = await self._transfer(cursor.last_sequence if cursor is not None else None)
        records = list(t.result.records)
        if cursor is not None:
            at_cursor = next(
                (r for r in records if r.measurement.sequence_number == cursor.last_sequence),
                None,
            )
            same_meter = at_cursor is not None and (
                cursor.last_device_time is None
                or at_cursor.measurement.device_time == cursor.last_device_time
            )
            if same_meter and not t.result.reset_suspected:
                self.reset_detected = False
                records = [r for r in records if r is not at_cursor]
            elif t.result.complete or records:
                self.reset_detected = True
                self.resets += 1
                log.warning("ble.meter_numbering_restarted", address=self._address)
                await self._count_malformed(t.result)
                if t.error is not None:
                    raise t.error  # the link went before the resync could start
                t = await self._transfer(None)
                records = list(t.result.records)
            # else: ended early with nothing at all; nothing to keep, the cursor stays
        await self._count_malformed(t.result)
        readings = await self._readings(records, t.received)
        if t.result.complete:
            await self._commit(readings, records, cursor)
            self.syncs += 1
            self._on_synced()
            return
        await self._keep_progress(readings, records, t.result)
        if t.error is not None:
            raise t.error
        t.result.raise_for_status()

    async def _readings(
        self, records: list[GlucoseRecord], received: dict[int, datetime]
    ) -> list[GlucoseReading]:
        """Each record as a reading. A record that cannot become one (a time that leaves the
        calendar once corrected, any decode or arithmetic error) is refused and counted on
        its own; the others go on, and the cursor still moves past it."""
        readings: list[GlucoseReading] = []
        refused: Counter[str] = Counter()
        for r in records:
            try:
                readings.append(
                    glucose_reading(
                        r.measurement,
                        r.context,
                        device_id=self._address,
                        patient=self._patient,
                        received_at=received.get(r.measurement.sequence_number)
                        or self._clock.now(),
                        clock_offset_s=self._clock_offset_s,
                        local_tz=self._local_tz,
                    )
                )
            except Rejected as exc:
                refused[exc.reason] += 1
            except (ArithmeticError, ValueError) as exc:
                refused[MALFORMED] += 1
                log.warning("ble.record_refused", address=self._address,
                            error=type(exc).__name__)
        for reason, n in refused.items():
            if reason == MALFORMED:
                await self._malformed(n)
            else:
                await self._sink.refuse(reason, n)
        return readings

    async def _commit(
        self,
        readings: list[GlucoseReading],
        records: list[GlucoseRecord],
        cursor: CursorLike | None,
    ) -> None:
        if not records:
            if cursor is not None and cursor.clock_offset_s != self._clock_offset_s:
                await self._sink.submit_glucose(
                    self._address,
                    [],
                    last_sequence=cursor.last_sequence,
                    last_device_time=cursor.last_device_time,
                    clock_offset_s=self._clock_offset_s,
                )
            return
        # Records come oldest first in the meter's numbering (wrap included).
        await self._commit_up_to(readings, records[-1])
        log.info("ble.glucose_synced", address=self._address, records=len(readings))

    async def _commit_up_to(self, readings: list[GlucoseReading], newest: GlucoseRecord) -> None:
        """``readings`` and the cursor at ``newest`` in one hand-over (one transaction)."""
        m = newest.measurement
        await self._sink.submit_glucose(
            self._address,
            readings,
            last_sequence=m.sequence_number,
            last_device_time=m.device_time,
            clock_offset_s=self._clock_offset_s,
        )
        self._on_reading(len(readings))

    async def _keep_progress(
        self, readings: list[GlucoseReading], records: list[GlucoseRecord], result: SyncResult
    ) -> None:
        """A transfer that ended early: store what arrived, and move the cursor to its newest
        record when nothing older can be missing (:func:`edge.ble.resume.resume_point`)."""
        point = resume_point(result)
        if records and point is not None and point in records:
            await self._commit_up_to(readings, point)
            self.advanced += 1
            log.info("ble.glucose_partial_kept", address=self._address, records=len(readings))
        elif readings:
            # stored without moving the cursor: fetched again next time, stored once (ids)
            await self._sink.submit(readings)
            self._on_reading(len(readings))

    async def _count_malformed(self, result: SyncResult) -> None:
        if result.malformed:
            await self._malformed(len(result.malformed))

    async def _malformed(self, n: int) -> None:
        self._on_malformed(n)
        await self._sink.refuse(MALFORMED, n)

    # --- one RACP transfer, driven by the pure machine ----------------------------------------

    async def _transfer(self, from_sequence: int | None) -> Transfer:
        """One RACP transfer from ``from_sequence`` (None: all), fed by this session's
        notification callbacks; see :func:`edge.ble.racp_transfer.run_transfer`."""
        events: asyncio.Queue[Event] = asyncio.Queue()
        self._events = events
        try:
            t = await run_transfer(self._link, self._clock, events, from_sequence,
                                   timeout_s=self._timeout, busy_retries=BUSY_RETRIES)
        finally:
            self._events = None
        if not t.result.complete:
            log.warning("ble.racp_incomplete", address=self._address, reason=t.result.reason,
                        records=len(t.result.records))
        return t
