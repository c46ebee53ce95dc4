"""The forwarder: vault outbox -> FHIR Bundles -> QoS 1 PUBLISH -> PUBACK -> mark delivered.

At-least-once, ack-before-delete: a reading is marked delivered only after the success PUBACK
of the exact message that carried it. Everything else that was sent on a connection that then
died (or whose PUBACK did not come within ``ack_timeout_s``) is re-sent on the next connection,
because each connection's :class:`~edge.uplink.batching.Batcher` starts its read cursor at the
oldest pending reading.

This module is the thin async shell: connect with backoff, run one session's tasks (pump,
status, ack deadlines, link watch), and apply the decisions of the pure batching policy. The
status documents are :mod:`edge.uplink.status_publisher`'s; the default (plain FHIR) encoding
is :mod:`edge.uplink.fhir_encoding`'s.
Consent is checked twice: rows read from the outbox for a patient without consent are
dropped, and each Bundle's patient is checked again immediately before it is published.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime

from edge.backoff import Backoff, BackoffPolicy
from edge.clock import Clock, cancel_and_wait, with_timeout
from edge.config import UplinkConfig
from edge.errors import (
    EdgeError,
    KeyUnavailable,
    PinMismatch,
    TlsVerificationError,
)
from edge.intake.consent import ConsentCheck
from edge.log import get_logger
from edge.uplink.batching import Batcher, Group, Limits, SizeEstimate
from edge.uplink.delivery import ACK_FLUSH_DELAY_S, DeliveryMarks
from edge.uplink.fhir_encoding import FHIR_CONTENT_TYPE, fhir_encoder
from edge.uplink.ports import (
    Connector,
    Encoder,
    MqttLink,
    Outbox,
    PendingLike,
    PublishRefused,
    StatusProvider,
)
from edge.uplink.stats import Counters, ForwarderState, ForwarderStats, snapshot
from edge.uplink.status_publisher import StatusPublisher
from edge.uplink.topics import TopicRouter

log = get_logger("edge.uplink")

#: a refusal is audited again (if it persists) after this many seconds
AUDIT_REPEAT_S = 3600.0
#: clean-shutdown bounds: the offline status, the last delivery commit, the DISCONNECT
OFFLINE_TIMEOUT_S = 1.0
FLUSH_TIMEOUT_S = 5.0
CLOSE_TIMEOUT_S = 2.0


class _SessionEnd(EdgeError):
    """Internal: the current connection must be dropped (reason in args)."""


class Forwarder:
    """Drains the outbox over one MQTT link at a time, reconnecting with backoff."""

    def __init__(
        self,
        config: UplinkConfig,
        hub_id: str,
        outbox: Outbox,
        *,
        connector: Connector,
        clock: Clock,
        consent: ConsentCheck,
        rng: random.Random | None = None,
        status_provider: StatusProvider | None = None,
        encoder: Encoder | None = None,
        content_type: str = FHIR_CONTENT_TYPE,
        cert_not_after: datetime | None = None,
        on_delivered: Callable[[Sequence[str]], None] | None = None,
        ack_flush_delay_s: float = ACK_FLUSH_DELAY_S,
    ) -> None:
        self._cfg = config
        self._outbox = outbox
        self._connector = connector
        self._clock = clock
        self._consent = consent
        self._backoff = Backoff(
            BackoffPolicy(base=config.reconnect_base_s, cap=config.reconnect_cap_s),
            rng or random.Random(),  # noqa: S311 -- jitter, not crypto
        )
        self._encode = encoder or fhir_encoder(hub_id)
        #: the MQTT 5 content type of what ``encoder`` makes (application/jose when sealed)
        self._content_type = content_type
        self._limits = Limits.from_config(config)
        self._router = TopicRouter(config.topic_prefix, hub_id)
        self._estimate = SizeEstimate()
        self._state = ForwarderState.CONNECTING
        self._refusal: str | None = None
        self._draining = False
        #: set by PUBACKs, finished outbox reads, wake() and begin_drain(): the pump looks again
        self._kick = asyncio.Event()
        self._batcher: Batcher | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._end: asyncio.Future[None] | None = None
        self._counters = Counters()
        self._marks = DeliveryMarks(outbox, self._counters, on_delivered, ack_flush_delay_s)
        self._last_audit: tuple[str, str, float] | None = None
        self._status = StatusPublisher(
            hub_id, config.topic_prefix, outbox, clock, self._counters,
            provider=status_provider, cert_not_after=cert_not_after,
        )

    # --- public ----------------------------------------------------------------------------

    @property
    def state(self) -> ForwarderState:
        """Where the connection loop is; a refusal's reason is in :meth:`stats`."""
        return self._state

    def stats(self) -> ForwarderStats:
        """Counters for `edge status` and the logs (no PHI)."""
        in_flight = self._batcher.in_flight if self._batcher is not None else 0
        return snapshot(self._counters, self._state, self._refusal, in_flight)

    def wake(self) -> None:
        """New readings were appended: send them now."""
        if self._batcher is not None:
            self._batcher.wake()
        self._kick.set()

    def begin_drain(self) -> None:
        """Shutting down: read and publish nothing new; in-flight messages may still be
        acknowledged. Rows not sent stay pending for the next start."""
        self._draining = True
        if self._batcher is not None:
            self._batcher.drain()
        self._kick.set()

    async def run(self) -> None:
        """Connect, forward, reconnect — until cancelled."""
        while True:
            self._state = ForwarderState.CONNECTING
            link: MqttLink | None = None
            try:
                link = await self._connector(self._status.will)
            except PinMismatch as exc:
                await self._refused(exc, "uplink.pin_mismatch", exc.presented_pin)
            except TlsVerificationError as exc:
                await self._refused(exc, "uplink.tls_refused", exc.reason)
            except KeyUnavailable as exc:
                self._refuse("key_unavailable")
                log.error("uplink.key_unavailable", error=str(exc))
            except EdgeError as exc:
                self._state = ForwarderState.BACKOFF
                self._counters.last_error = "unreachable"
                log.info("uplink.unreachable", error=str(exc))
            if link is not None:
                await self._session(link)
            delay = self._backoff.next_delay()
            log.info("uplink.backoff", delay_s=round(delay, 3), state=self.stats().state_label)
            await self._clock.sleep(delay)

    # --- connection outcome ----------------------------------------------------------------

    def _refuse(self, reason: str) -> None:
        self._state = ForwarderState.REFUSED
        self._refusal = reason
        self._counters.last_error = reason

    async def _refused(self, exc: TlsVerificationError, action: str, subject: str) -> None:
        self._refuse(exc.reason)
        if isinstance(exc, PinMismatch):
            log.warning("uplink.pin_mismatch", presented_pin=subject)
        else:
            log.warning("uplink.tls_refused", reason=exc.reason, error=str(exc))
        await self._audit(action, subject)

    async def _audit(self, action: str, subject: str) -> None:
        now = self._clock.monotonic()
        last = self._last_audit
        if last is not None and last[:2] == (action, subject) and now - last[2] < AUDIT_REPEAT_S:
            return
        self._last_audit = (action, subject, now)
        try:
            await self._outbox.audit("uplink", action, subject)
        except EdgeError as exc:
            log.error("uplink.audit_failed", action=action, error=type(exc).__name__)

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- one connection --------------------------------------------------------------------

    async def _session(self, link: MqttLink) -> None:
        batcher = Batcher(self._limits, self._router, self._estimate)
        if self._draining:
            batcher.drain()
        self._batcher = batcher
        self._state = ForwarderState.CONNECTED
        self._counters.sessions += 1
        end: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Its exception is read by _end_reason, or not at all when another task ended first.
        end.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._end = end
        self._last_audit = None
        info = link.info
        log.info(
            "uplink.connected",
            tls=info.tls_version,
            cipher=info.cipher,
            pin_matched_on=info.pin.matched_on,
            mqtt=info.mqtt_version,
        )
        tasks = [
            asyncio.create_task(self._pump(link, batcher), name="uplink-pump"),
            asyncio.create_task(self._status_loop(link), name="uplink-status"),
            asyncio.create_task(self._ack_watchdog(batcher), name="uplink-acks"),
            asyncio.create_task(self._watch_link(link), name="uplink-link"),
        ]
        try:
            done, _ = await asyncio.wait([*tasks, end], return_when=asyncio.FIRST_COMPLETED)
            reason = self._end_reason(done)
        except asyncio.CancelledError:
            await _stop(tasks)
            await self._shutdown(link)
            raise
        finally:
            await _stop(tasks)
            link.abort()
            # Everything acknowledged is marked before the next connection's cursor restarts
            # at the oldest pending reading, so nothing acknowledged is ever sent again.
            await self._marks.flush()
            self._batcher = None
        if self._state is not ForwarderState.REFUSED:
            self._state = ForwarderState.BACKOFF
        self._counters.last_error = reason
        log.info("uplink.disconnected", reason=reason)

    def _end_reason(self, done: set[asyncio.Future[None]]) -> str:
        for fut in done:
            if fut.cancelled():
                continue
            exc = fut.exception()
            if exc is not None:
                if isinstance(exc, EdgeError):
                    return str(exc)
                raise exc
        return "connection closed"

    def _end_session(self, reason: str) -> None:
        if self._end is not None and not self._end.done():
            self._end.set_exception(_SessionEnd(reason))

    async def _watch_link(self, link: MqttLink) -> None:
        reason = await link.wait_closed()
        raise _SessionEnd(str(reason) if reason else "connection closed")

    async def _shutdown(self, link: MqttLink) -> None:
        """Clean stop: say offline (retained), DISCONNECT, record acks — bounded in time."""
        clock = self._clock
        if not link.is_closed:
            with contextlib.suppress(Exception):
                fut = self._status.send_offline(link)
                await with_timeout(clock, OFFLINE_TIMEOUT_S, fut)
        with contextlib.suppress(Exception):
            await with_timeout(clock, FLUSH_TIMEOUT_S, self._marks.flush())
        with contextlib.suppress(Exception):
            await with_timeout(clock, CLOSE_TIMEOUT_S, link.close())
        link.abort()

    # --- sending ---------------------------------------------------------------------------

    async def _pump(self, link: MqttLink, batcher: Batcher) -> None:
        """Read ahead from the outbox while messages are in flight; send whenever the window
        has room (the batcher decides both)."""
        fetch: asyncio.Task[Sequence[PendingLike]] | None = None
        try:
            while True:
                if fetch is not None and fetch.done():
                    rows = fetch.result()
                    fetch = None
                    self._counters.consent_dropped += batcher.rows_read(
                        rows, self._consent.allows
                    )
                if link.is_closed:
                    return
                read = batcher.next_read() if fetch is None else None
                if read is not None:
                    self._marks.soon()  # the marks ride in the same handoff as the read
                    fetch = asyncio.ensure_future(
                        self._outbox.next_batch(read.limit, after_seq=read.after_seq)
                    )
                    fetch.add_done_callback(lambda _: self._kick.set())
                packing = batcher.pack()
                for _ in range(packing.unroutable):
                    self._counters.unroutable += 1
                    log.error("uplink.unroutable_reading")
                if packing.groups or packing.unroutable:
                    for group in packing.groups:
                        self._send(link, batcher, group)
                    continue
                # State was examined after the last await; only callbacks set the kick.
                self._kick.clear()
                await self._kick.wait()
        finally:
            if fetch is not None:
                fetch.cancel()

    def _send(self, link: MqttLink, batcher: Batcher, group: Group) -> None:
        if not self._consent.allows(group.patient):
            # Read before a revoke: the rows were purged; the Bundle is done, not sent.
            ids = [r.id for r in group.rows]
            self._counters.revoked_not_sent += 1
            self._counters.messages_sent += 1
            self._counters.readings_sent += len(ids)
            log.info("uplink.revoked_not_sent")
            self._acknowledged(ids)
            return
        encoded = batcher.encode(group, self._encode)
        for error in encoded.unencodable:
            # A stored row that no longer decodes stays pending (counted, logged), never
            # dropped, and does not block the rest.
            self._counters.unencodable += 1
            log.error("uplink.unencodable_reading", error=error)
        for msg in encoded.messages:
            fut = link.publish(
                msg.topic,
                msg.payload,
                content_type=self._content_type,
                message_expiry_s=self._cfg.message_expiry_s,
            )
            token = batcher.sent(msg, self._clock.monotonic())
            self._counters.messages_sent += 1
            self._counters.readings_sent += len(msg.ids)
            fut.add_done_callback(functools.partial(self._on_ack, batcher, token))

    def _on_ack(self, batcher: Batcher, token: int, fut: asyncio.Future[None]) -> None:
        if batcher is not self._batcher:
            return  # its connection is gone; the rows are re-sent on the next one
        entry = batcher.settle(token)
        if entry is None or fut.cancelled():
            return
        self._kick.set()
        exc = fut.exception()
        if exc is None:
            self._acknowledged(list(entry.ids))
        elif isinstance(exc, PublishRefused):
            self._counters.publish_refusals += 1
            self._refuse(exc.reason)
            log.warning("uplink.publish_refused", reason=exc.reason, code=exc.reason_code)
            self._spawn(self._audit("uplink.publish_refused", exc.reason))
            self._end_session(f"publish refused ({exc.reason})")
        # Any other failure is the link dying; _watch_link ends the session.

    def _acknowledged(self, ids: list[str]) -> None:
        self._counters.messages_acked += 1
        self._marks.acknowledged(ids)
        self._backoff.reset()

    async def _ack_watchdog(self, batcher: Batcher) -> None:
        while True:
            now = self._clock.monotonic()
            if batcher.overdue(now):
                self._counters.ack_timeouts += 1
                log.warning("uplink.ack_timeout", in_flight=batcher.in_flight)
                raise _SessionEnd("PUBACK not received in time")
            await self._clock.sleep(batcher.next_ack_check(now))

    # --- status ----------------------------------------------------------------------------

    async def status_document(self) -> dict[str, object]:
        """The retained online status, no PHI (see
        :meth:`~edge.uplink.status_publisher.StatusPublisher.document`)."""
        return await self._status.document()

    async def _status_loop(self, link: MqttLink) -> None:
        try:
            await self._status.run(link, self._cfg.status_interval_s, self._backoff.reset)
        except PublishRefused as exc:
            self._counters.publish_refusals += 1
            self._refuse(exc.reason)
            log.warning("uplink.status_refused", reason=exc.reason, code=exc.reason_code)
            await self._audit("uplink.publish_refused", exc.reason)
            raise _SessionEnd(f"status refused ({exc.reason})") from exc


async def _stop(tasks: Sequence[asyncio.Task[None]]) -> None:
    for t in tasks:
        await cancel_and_wait(t)
