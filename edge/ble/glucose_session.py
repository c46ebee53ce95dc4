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
* no progress for ``racp_timeout_s``: abort, :class:`RacpError`; the supervisor reconnects
  later and the cursor (unchanged) makes the next sync fetch the same records again.

The RACP protocol itself (requests, wrap, busy retries, timeouts, context pairing) is the pure
:class:`edge.gatt.racp_client.RacpSync`; this module only drives it with bleak and the clock.

The records and the new cursor go to intake in ONE call (one vault transaction).

Choice: after the sync the session stays connected and listens, re-syncing from the cursor
when the meter pushes a measurement (a notification outside a RACP procedure: the pushed record
is fetched through RACP rather than stored directly, so the cursor logic stays in one place)
and every ``poll_s`` while connected (meters that store new records silently). A meter that
drops the link (most do after a transfer) is re-synced on its next connection, which the
supervisor makes once the meter advertises again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, tzinfo

from bleak.args.bluez import BlueZNotifyArgs
from bleak.backends.characteristic import BleakGATTCharacteristic

from edge.ble.errors import BleOperationError, att_code
from edge.ble.link import Link, cancel_and_wait, with_timeout
from edge.ble.ports import CursorLike, DeviceRegistry, IntakeSink
from edge.ble.profiles import (
    CURRENT_TIME,
    GLUCOSE_CONTEXT,
    GLUCOSE_FEATURE,
    GLUCOSE_MEASUREMENT,
    RACP,
)
from edge.clock import Clock
from edge.errors import MalformedPayload, PairingRefused
from edge.gatt.current_time import decode_current_time
from edge.gatt.glucose_feature import decode_glucose_feature
from edge.gatt.racp_client import (
    Action,
    Finished,
    GlucoseRecord,
    RacpSync,
    SyncResult,
    Write,
)
from edge.gatt.to_reading import clock_offset_seconds, glucose_reading
from edge.log import get_logger
from edge.readings import GlucoseReading

log = get_logger("edge.ble.glucose")

#: how often a RACP request refused with ATT 0x80 is aborted and retried
BUSY_RETRIES = 3

_Event = tuple[str, bytes, datetime]


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
        self._events: asyncio.Queue[_Event] | None = None
        self._pushed = asyncio.Event()
        self._clock_offset_s = 0
        #: completed syncs in this session
        self.syncs = 0
        #: whether the last sync found the meter's numbering restarted
        self.reset_detected = False
        #: restarts of the meter's numbering detected in this session
        self.resets = 0

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
        if cursor is None:
            result, received = await self._transfer(None)
            records = list(result.records)
        else:
            # ">= the cursor's own number": its record comes back and vouches for the numbering.
            result, received = await self._transfer(cursor.last_sequence)
            records = list(result.records)
            at_cursor = next(
                (r for r in records if r.measurement.sequence_number == cursor.last_sequence),
                None,
            )
            same_meter = at_cursor is not None and (
                cursor.last_device_time is None
                or at_cursor.measurement.device_time == cursor.last_device_time
            )
            if same_meter and not result.reset_suspected:
                self.reset_detected = False
                records = [r for r in records if r is not at_cursor]
            else:
                self.reset_detected = True
                self.resets += 1
                log.warning("ble.meter_numbering_restarted", address=self._address)
                malformed = len(result.malformed)
                result, received = await self._transfer(None)
                records = list(result.records)
                if malformed:
                    await self._malformed(malformed)
        if result.malformed:
            await self._malformed(len(result.malformed))
        readings = [
            glucose_reading(
                r.measurement,
                r.context,
                device_id=self._address,
                patient=self._patient,
                received_at=received.get(r.measurement.sequence_number) or self._clock.now(),
                clock_offset_s=self._clock_offset_s,
                local_tz=self._local_tz,
            )
            for r in records
        ]
        await self._commit(readings, records, cursor)
        self.syncs += 1
        self._on_synced()

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
        newest = records[-1].measurement
        await self._sink.submit_glucose(
            self._address,
            readings,
            last_sequence=newest.sequence_number,
            last_device_time=newest.device_time,
            clock_offset_s=self._clock_offset_s,
        )
        self._on_reading(len(readings))
        log.info("ble.glucose_synced", address=self._address, records=len(readings))

    async def _malformed(self, n: int) -> None:
        self._on_malformed(n)
        await self._sink.refuse("malformed", n)

    # --- one RACP transfer, driven by the pure machine ----------------------------------------

    async def _transfer(self, from_sequence: int | None) -> tuple[SyncResult, dict[int, datetime]]:
        """Drive :class:`RacpSync` from ``from_sequence`` (None: all) to its end.

        Returns the complete result and each record's receive time; raises RacpError when the
        transfer failed (the cursor then stays where it was)."""
        sync = RacpSync(from_sequence, self._timeout, max_busy_retries=BUSY_RETRIES)
        events: asyncio.Queue[_Event] = asyncio.Queue()
        received: dict[int, datetime] = {}
        self._events = events
        try:
            action: Action = sync.start(self._clock.monotonic())
            while not isinstance(action, Finished):
                if isinstance(action, Write):
                    try:
                        await self._link.call(
                            "racp_write",
                            self._client.write_gatt_char(RACP, action.payload, True),
                        )
                    except BleOperationError as exc:
                        code = att_code(exc.__cause__) if exc.__cause__ else None
                        if code is None:
                            raise
                        action = sync.write_failed(code, self._clock.monotonic())
                        continue
                event = await self._next_event(events, action.deadline)
                now = self._clock.monotonic()
                if event is None:
                    action = sync.tick(now)
                    continue
                uuid, data, at = event
                if uuid == GLUCOSE_MEASUREMENT:
                    if len(data) >= 3:
                        received.setdefault(int.from_bytes(data[1:3], "little"), at)
                    action = sync.measurement(data, now)
                elif uuid == GLUCOSE_CONTEXT:
                    action = sync.context(data, now)
                else:
                    action = sync.indication(data, now)
        finally:
            self._events = None
        result = action.result
        if not result.complete:
            log.warning("ble.racp_incomplete", address=self._address, reason=result.reason,
                        records=len(result.records))
            result.raise_for_status()
        return result, received

    async def _next_event(self, events: asyncio.Queue[_Event], deadline: float) -> _Event | None:
        if not events.empty():
            return events.get_nowait()
        remaining = max(0.0, deadline - self._clock.monotonic())
        try:
            return await self._link.call(
                "racp", with_timeout(self._clock, remaining, events.get())
            )
        except BleOperationError as exc:
            if exc.reason == "timeout":
                return None
            raise
