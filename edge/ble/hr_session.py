"""Heart-rate session: stay connected, every 0x2A37 notification becomes a reading.

Notifications arrive in a bleak callback (synchronous); they are queued with their receive
time and a consumer decodes and submits them. The consumer takes whatever has queued up as one
batch, so nothing waits for more readings: a reading is handed to intake as soon as the
previous submit returns (well under a second at 1 Hz straps).

A strap may not notify faster than its rate limit (``ble.heart_rate_max_hz``, bursts of
``ble.heart_rate_burst``; a token bucket per session, i.e. per device): the excess is refused
in the callback, before it is queued or decoded, and counted as ``rate_limited`` (reported to
intake at most every ``REFUSALS_EVERY_S`` and when the session ends), never stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime

from bleak.backends.characteristic import BleakGATTCharacteristic

from edge.ble.errors import BleOperationError
from edge.ble.link import Link, cancel_and_wait, with_timeout
from edge.ble.ports import IntakeSink
from edge.ble.profiles import HEART_RATE_MEASUREMENT
from edge.ble.ratelimit import RateLimit, TokenBucket
from edge.clock import Clock
from edge.errors import MalformedPayload
from edge.gatt.heart_rate import decode_heart_rate_measurement
from edge.gatt.to_reading import heart_rate_reading
from edge.log import get_logger

log = get_logger("edge.ble.hr")

#: notifications queued beyond this are refused (``overflow``) rather than held without bound
QUEUE_LIMIT = 1024
#: the default rate limit (``ble.heart_rate_max_hz`` / ``heart_rate_burst``)
DEFAULT_RATE_LIMIT = RateLimit(4.0, 8)
#: rate-limited notifications are reported to intake at most this often (and at the end)
REFUSALS_EVERY_S = 5.0
RATE_LIMITED = "rate_limited"


class HeartRateSession:
    """One connection's worth of heart-rate streaming. :meth:`run` returns only by raising:
    :class:`BleOperationError` on a link drop (``link_lost``) or a stall (``stalled``)."""

    def __init__(
        self,
        link: Link,
        *,
        address: str,
        patient: str,
        sink: IntakeSink,
        clock: Clock,
        stall_timeout_s: float,
        rate_limit: RateLimit | TokenBucket = DEFAULT_RATE_LIMIT,
        on_reading: Callable[[int], None] = lambda n: None,
        on_malformed: Callable[[int], None] = lambda n: None,
    ) -> None:
        self._link = link
        self._address = address
        self._patient = patient
        self._sink = sink
        self._clock = clock
        self._stall_timeout_s = stall_timeout_s
        self._on_reading = on_reading
        self._on_malformed = on_malformed
        self._queue: asyncio.Queue[tuple[bytes, datetime]] = asyncio.Queue(QUEUE_LIMIT)
        self._overflow = 0
        # a bucket handed in outlives the session: the limit holds across reconnections
        self._bucket = (
            rate_limit if isinstance(rate_limit, TokenBucket) else TokenBucket(rate_limit)
        )
        self._rate_limited = 0
        self._refusals_sent_at: float | None = None
        self._last_rx = clock.monotonic()
        self._rx = asyncio.Event()
        #: notifications received in this session (rate-limited ones included)
        self.received = 0
        #: notifications refused by the rate limit in this session
        self.rate_limited = 0

    def _on_notify(self, _char: BleakGATTCharacteristic, data: bytearray) -> None:
        now = self._clock.monotonic()
        self._last_rx = now
        self.received += 1
        self._rx.set()
        if not self._bucket.allow(now):
            if not self.rate_limited:
                log.warning("ble.hr_rate_limited", address=self._address,
                            max_hz=self._bucket.limit.rate_hz)
            self.rate_limited += 1
            self._rate_limited += 1
            return
        try:
            self._queue.put_nowait((bytes(data), self._clock.now()))
        except asyncio.QueueFull:
            self._overflow += 1

    async def run(self) -> None:
        """Subscribe, then stream until the link drops or goes quiet."""
        await self._link.call(
            "subscribe", self._link.client.start_notify(HEART_RATE_MEASUREMENT, self._on_notify)
        )
        self._last_rx = self._clock.monotonic()
        consumer = asyncio.ensure_future(self._consume())
        watchdog = asyncio.ensure_future(self._watch_stall())
        dropped = asyncio.ensure_future(self._link.wait_dropped())
        tasks: set[asyncio.Future[None]] = {consumer, watchdog, dropped}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (watchdog, dropped):
                await cancel_and_wait(t)
            # Hand over what already arrived before giving up the session.
            await self._drain_then_stop(consumer)
        await self._report_refusals(force=True)
        if consumer in done:
            consumer.result()
        if dropped in done:
            raise BleOperationError("stream", "link_lost")
        raise BleOperationError("stream", "stalled")

    async def _drain_then_stop(self, consumer: asyncio.Future[None]) -> None:
        if consumer.done():
            return
        try:
            await with_timeout(self._clock, 5.0, self._queue.join())
        except TimeoutError:
            log.warning("ble.hr_drain_timeout", address=self._address)
        finally:
            await cancel_and_wait(consumer)

    async def _watch_stall(self) -> None:
        while True:
            idle = self._clock.monotonic() - self._last_rx
            if idle >= self._stall_timeout_s:
                log.warning("ble.hr_stalled", address=self._address)
                return
            await self._clock.sleep(self._stall_timeout_s - idle)

    async def _consume(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._submit(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _submit(self, batch: list[tuple[bytes, datetime]]) -> None:
        readings = []
        malformed = 0
        for data, received_at in batch:
            try:
                readings.append(
                    heart_rate_reading(
                        decode_heart_rate_measurement(data),
                        device_id=self._address,
                        patient=self._patient,
                        received_at=received_at,
                    )
                )
            except MalformedPayload as exc:
                malformed += 1
                log.info("ble.malformed", address=self._address, characteristic=exc.characteristic)
        if malformed:
            self._on_malformed(malformed)
            await self._sink.refuse("malformed", malformed)
        await self._report_refusals(force=False)
        if readings:
            await self._sink.submit(readings)
            self._on_reading(len(readings))

    async def _report_refusals(self, *, force: bool) -> None:
        """Hand the overflow and rate-limit counts to intake: now when ``force``, else at most
        every ``REFUSALS_EVERY_S`` (a flooding strap must not flood the vault with counts)."""
        now = self._clock.monotonic()
        if self._overflow:
            n, self._overflow = self._overflow, 0
            await self._sink.refuse("overflow", n)
        if not self._rate_limited:
            return
        last = self._refusals_sent_at
        if not force and last is not None and now - last < REFUSALS_EVERY_S:
            return
        self._refusals_sent_at = now
        n, self._rate_limited = self._rate_limited, 0
        await self._sink.refuse(RATE_LIMITED, n)
