"""The forwarder: vault outbox -> FHIR Bundles -> QoS 1 PUBLISH -> PUBACK -> mark delivered.

At-least-once, ack-before-delete: a reading is marked delivered only after the success PUBACK
of the exact message that carried it. Everything else that was sent on a connection that then
died (or whose PUBACK did not come within ``ack_timeout_s``) is re-sent on the next connection,
because the read cursor restarts at the oldest pending reading.

The window is the application's: at most ``inflight_window`` messages await a PUBACK. When the
outbox holds only a few readings they go out at once (no batching delay); under a backlog each
message carries up to ``batch_max_readings`` readings of one patient and at most
``batch_max_bytes`` bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from edge import fhir
from edge.backoff import Backoff, BackoffPolicy
from edge.clock import Clock, SystemClock
from edge.config import UplinkConfig
from edge.errors import EdgeError, KeyUnavailable, PinMismatch, TlsVerificationError
from edge.log import get_logger
from edge.readings import GlucoseReading, HeartRateReading
from edge.uplink.mqtt import Link, LinkFactory, PublishRefused, TlsMqttConnector, Will
from edge.uplink.tls import client_cert_not_after, days_left

log = get_logger("edge.uplink")

FHIR_CONTENT_TYPE = "application/fhir+json"
#: a refusal is audited again (if it persists) after this many seconds
AUDIT_REPEAT_S = 3600.0
#: leave this much room under batch_max_bytes for the estimate's error
_BYTES_HEADROOM = 0.85
#: read ahead this many full windows, so a vault read queued behind a delivery commit does
#: not leave the window idle
READ_AHEAD_WINDOWS = 2


class PendingLike(Protocol):
    """A pending outbox row (``edge.vault.PendingReading``)."""

    @property
    def seq(self) -> int: ...

    @property
    def id(self) -> str: ...

    @property
    def patient(self) -> str: ...

    @property
    def payload(self) -> bytes: ...

    def reading(self) -> HeartRateReading | GlucoseReading: ...


class OutboxStats(Protocol):
    """The part of ``edge.vault.VaultStats`` the status document uses."""

    @property
    def pending(self) -> int: ...

    @property
    def oldest_pending_age_s(self) -> float | None: ...


class Outbox(Protocol):
    """What the forwarder needs from the vault (``edge.vault.Vault``)."""

    async def next_batch(self, limit: int, *, after_seq: int = 0) -> Sequence[PendingLike]: ...

    async def mark_delivered(self, ids: Sequence[str]) -> int: ...

    async def stats(self) -> OutboxStats: ...

    async def audit(self, actor: str, action: str, subject: str = "") -> None: ...


#: turns a group of one patient's pending rows into a message payload
Encoder = Callable[[Sequence[PendingLike]], bytes]
StatusProvider = Callable[[], Awaitable[dict[str, Any]]]


def obs_topic(prefix: str, hub_id: str, patient: str) -> str:
    """Topic of a patient's Bundles."""
    return f"{prefix}/{hub_id}/obs/{patient}"


def status_topic(prefix: str, hub_id: str) -> str:
    """Topic of the hub's retained status document and Last Will."""
    return f"{prefix}/{hub_id}/status"


def offline_document(hub_id: str) -> bytes:
    """The Last Will / clean-shutdown status."""
    return json.dumps({"hub": hub_id, "state": "offline"}, separators=(",", ":")).encode()


def fhir_encoder(hub_id: str) -> Encoder:
    """The default encoder: a FHIR R4 transaction Bundle."""

    def encode(rows: Sequence[PendingLike]) -> bytes:
        return fhir.bundle_bytes([r.reading() for r in rows], hub_id=hub_id)

    return encode


def _topic_safe(patient: str) -> bool:
    return bool(patient) and not any(c in patient for c in "/+#\0")


@dataclass
class Batch:
    """One message in flight: which readings it carries."""

    ids: list[str]
    sent_at: float
    topic: str


@dataclass
class _Counters:
    sessions: int = 0
    messages_sent: int = 0
    messages_acked: int = 0
    readings_sent: int = 0
    readings_delivered: int = 0
    ack_timeouts: int = 0
    publish_refusals: int = 0
    unroutable: int = 0
    unencodable: int = 0
    last_error: str | None = None
    extra: dict[str, int] = field(default_factory=dict)


class _SessionEnd(Exception):
    """Internal: the current connection must be dropped (reason in args)."""


async def _stop(tasks: Sequence[asyncio.Task[Any]]) -> None:
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t


class Forwarder:
    """Drains the vault outbox over one MQTT link at a time, reconnecting with backoff."""

    def __init__(
        self,
        config: UplinkConfig,
        hub_id: str,
        vault: Outbox,
        *,
        link_factory: LinkFactory | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        status_provider: StatusProvider | None = None,
        encoder: Encoder | None = None,
        on_delivered: Callable[[Sequence[str]], None] | None = None,
    ) -> None:
        self._cfg = config
        self._hub = hub_id
        self._vault = vault
        self._link_factory = link_factory or TlsMqttConnector(config, hub_id)
        self._clock: Clock = clock or SystemClock()
        self._backoff = Backoff(
            BackoffPolicy(base=config.reconnect_base_s, cap=config.reconnect_cap_s),
            rng or random.Random(),  # noqa: S311 -- jitter, not crypto
        )
        self._status_provider = status_provider
        self._encode = encoder or fhir_encoder(hub_id)
        self._on_delivered = on_delivered
        self._state = "connecting"
        #: set by PUBACKs, finished vault reads and wake(): the pump re-examines its state
        self._kick = asyncio.Event()
        self._wake_pending = False
        self._link: Link | None = None
        self._inflight: dict[asyncio.Future[None], Batch] = {}
        self._topics: dict[str, str | None] = {}
        self._acked: list[str] = []
        self._flush_task: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self._end: asyncio.Future[None] | None = None
        self._counters = _Counters()
        self._bytes_ratio = 3.0
        self._last_audit: tuple[str, str, float] | None = None
        self._status_topic = status_topic(config.topic_prefix, hub_id)
        self._will = Will(self._status_topic, offline_document(hub_id))
        self._cert_not_after = None
        with contextlib.suppress(OSError, ValueError):
            self._cert_not_after = client_cert_not_after(config)

    # --- public ----------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """``connected`` | ``connecting`` | ``backoff`` | ``refused:<reason>``."""
        return self._state

    def wake(self) -> None:
        """New readings were appended: send them now."""
        self._wake_pending = True
        self._kick.set()

    def stats(self) -> dict[str, Any]:
        """Counters for `edge status` and the logs (no PHI)."""
        c = self._counters
        return {
            "state": self._state,
            "in_flight": len(self._inflight),
            "sessions": c.sessions,
            "messages_sent": c.messages_sent,
            "messages_acked": c.messages_acked,
            "readings_sent": c.readings_sent,
            "readings_delivered": c.readings_delivered,
            "ack_timeouts": c.ack_timeouts,
            "publish_refusals": c.publish_refusals,
            "unroutable": c.unroutable,
            "unencodable": c.unencodable,
            "last_error": c.last_error,
        }

    async def run(self) -> None:
        """Connect, forward, reconnect — until cancelled."""
        while True:
            self._state = "connecting"
            link: Link | None = None
            try:
                link = await self._link_factory(self._will)
            except PinMismatch as exc:
                await self._refused(exc, "uplink.pin_mismatch", exc.presented_pin)
            except TlsVerificationError as exc:
                await self._refused(exc, "uplink.tls_refused", exc.reason)
            except KeyUnavailable as exc:
                self._state = "refused:key_unavailable"
                self._counters.last_error = "key_unavailable"
                log.error("uplink.key_unavailable", error=str(exc))
            except EdgeError as exc:
                self._state = "backoff"
                self._counters.last_error = "unreachable"
                log.info("uplink.unreachable", error=str(exc))
            if link is not None:
                await self._session(link)
            delay = self._backoff.next_delay()
            log.info("uplink.backoff", delay_s=round(delay, 3), state=self._state)
            await self._clock.sleep(delay)

    # --- connection outcome ----------------------------------------------------------------

    async def _refused(self, exc: TlsVerificationError, action: str, subject: str) -> None:
        self._state = f"refused:{exc.reason}"
        self._counters.last_error = exc.reason
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
            await self._vault.audit("uplink", action, subject)
        except EdgeError as exc:
            log.error("uplink.audit_failed", action=action, error=type(exc).__name__)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- one connection --------------------------------------------------------------------

    async def _session(self, link: Link) -> None:
        self._link = link
        self._state = "connected"
        self._counters.sessions += 1
        self._inflight.clear()
        self._end = asyncio.get_running_loop().create_future()
        # Its exception is read by _end_reason, or not at all when another task ended first.
        self._end.add_done_callback(lambda f: f.cancelled() or f.exception())
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
            asyncio.create_task(self._pump(link), name="uplink-pump"),
            asyncio.create_task(self._status_loop(link), name="uplink-status"),
            asyncio.create_task(self._ack_watchdog(link), name="uplink-acks"),
            asyncio.create_task(self._watch_link(link), name="uplink-link"),
        ]
        try:
            done, _ = await asyncio.wait([*tasks, self._end], return_when=asyncio.FIRST_COMPLETED)
            reason = self._end_reason(done)
        except asyncio.CancelledError:
            await _stop(tasks)
            await self._shutdown(link)
            raise
        finally:
            await _stop(tasks)
            link.abort()
            # Everything acknowledged is marked before the cursor restarts at the oldest
            # pending reading, so nothing acknowledged is ever sent again.
            await self._flush()
            self._inflight.clear()
            self._link = None
        if not self._state.startswith("refused:"):
            self._state = "backoff"
        self._counters.last_error = reason
        log.info("uplink.disconnected", reason=reason)

    def _end_reason(self, done: set[asyncio.Future[Any]]) -> str:
        for fut in done:
            if fut.cancelled():
                continue
            exc = fut.exception()
            if exc is not None:
                if isinstance(exc, _SessionEnd):
                    return str(exc)
                if isinstance(exc, EdgeError):
                    return str(exc)
                raise exc
        return "connection closed"

    def _end_session(self, reason: str) -> None:
        if self._end is not None and not self._end.done():
            self._end.set_exception(_SessionEnd(reason))

    async def _watch_link(self, link: Link) -> None:
        reason = await link.wait_closed()
        raise _SessionEnd(str(reason) if reason else "connection closed")

    async def _shutdown(self, link: Link) -> None:
        """Clean stop: say offline (retained), DISCONNECT, record acks — bounded in time."""
        if not link.is_closed:
            with contextlib.suppress(Exception):
                fut = link.publish(self._status_topic, offline_document(self._hub), retain=True)
                await asyncio.wait_for(fut, 1.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._flush(), 5.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(link.close(), 2.0)
        link.abort()

    # --- sending ---------------------------------------------------------------------------

    async def _pump(self, link: Link) -> None:
        """Read ahead from the vault while messages are in flight; send whenever the window
        has room. The read cursor lives here, so every new connection starts again at the
        oldest pending reading (everything unacknowledged is re-sent)."""
        cfg = self._cfg
        chunk = cfg.inflight_window * cfg.batch_max_readings * READ_AHEAD_WINDOWS
        buffer: list[PendingLike] = []
        after = 0
        drained = False
        fetch: asyncio.Task[Sequence[PendingLike]] | None = None
        self._wake_pending = True
        try:
            while True:
                if fetch is not None and fetch.done():
                    rows = fetch.result()
                    fetch = None
                    buffer.extend(rows)
                    if rows:
                        after = rows[-1].seq
                    drained = len(rows) < chunk
                if link.is_closed:
                    return
                if fetch is None and len(buffer) < chunk and (
                    not drained or self._wake_pending
                ):
                    self._wake_pending = False
                    fetch = asyncio.ensure_future(self._vault.next_batch(chunk, after_seq=after))
                    fetch.add_done_callback(lambda _: self._kick.set())
                free = cfg.inflight_window - len(self._inflight)
                if free > 0 and buffer:
                    groups, used = self._pack(buffer, free)
                    del buffer[:used]
                    for group in groups:
                        self._send(link, group)
                    continue
                # State was examined after the last await; only callbacks set the kick.
                self._kick.clear()
                await self._kick.wait()
        finally:
            if fetch is not None:
                fetch.cancel()

    def _topic(self, patient: str) -> str | None:
        topic = self._topics.get(patient, "")
        if topic == "":
            topic = (
                obs_topic(self._cfg.topic_prefix, self._hub, patient)
                if _topic_safe(patient)
                else None
            )
            if len(self._topics) > 10_000:
                self._topics.clear()
            self._topics[patient] = topic
        return topic

    def _pack(
        self, rows: Sequence[PendingLike], max_messages: int
    ) -> tuple[list[list[PendingLike]], int]:
        """Group a prefix of ``rows`` (oldest first) into at most ``max_messages`` per-patient
        groups; returns the groups and how many rows the prefix holds."""
        cfg = self._cfg
        budget = cfg.batch_max_bytes * _BYTES_HEADROOM
        ratio = self._bytes_ratio
        groups: list[list[PendingLike]] = []
        open_groups: dict[str, tuple[list[PendingLike], float]] = {}
        used = 0
        for row in rows:
            patient = row.patient
            if self._topic(patient) is None:
                # Cannot be routed to a topic; it stays pending and is counted, never dropped.
                self._counters.unroutable += 1
                log.error("uplink.unroutable_reading")
                used += 1
                continue
            est = len(row.payload) * ratio
            current = open_groups.get(patient)
            if current is not None and (
                len(current[0]) >= cfg.batch_max_readings or current[1] + est > budget
            ):
                current = None
            if current is None:
                if len(groups) >= max_messages:
                    break
                group: list[PendingLike] = []
                groups.append(group)
                current = (group, 0.0)
            current[0].append(row)
            open_groups[patient] = (current[0], current[1] + est)
            used += 1
        return groups, used

    def _send(self, link: Link, rows: list[PendingLike]) -> None:
        try:
            payload = self._encode(rows)
        except Exception as exc:
            # A stored row that no longer decodes must not block the rest: send the others
            # one by one; the bad one stays pending (counted, in the log), never dropped.
            if len(rows) > 1:
                for row in rows:
                    self._send(link, [row])
                return
            self._counters.unencodable += 1
            log.error("uplink.unencodable_reading", error=type(exc).__name__)
            return
        raw = sum(len(r.payload) for r in rows)
        if raw:
            # Track how much bigger FHIR is than the stored JSON, for the next estimate.
            self._bytes_ratio = 0.8 * self._bytes_ratio + 0.2 * (len(payload) / raw)
        if len(payload) > self._cfg.batch_max_bytes and len(rows) > 1:
            half = len(rows) // 2
            self._send(link, rows[:half])
            self._send(link, rows[half:])
            return
        topic = self._topic(rows[0].patient) or ""
        fut = link.publish(
            topic,
            payload,
            content_type=FHIR_CONTENT_TYPE,
            message_expiry_s=self._cfg.message_expiry_s,
        )
        self._inflight[fut] = Batch([r.id for r in rows], self._clock.monotonic(), topic)
        self._counters.messages_sent += 1
        self._counters.readings_sent += len(rows)
        fut.add_done_callback(self._on_ack)

    def _on_ack(self, fut: asyncio.Future[None]) -> None:
        batch = self._inflight.pop(fut, None)
        if batch is None or fut.cancelled():
            return
        self._kick.set()
        exc = fut.exception()
        if exc is None:
            self._counters.messages_acked += 1
            self._acked.extend(batch.ids)
            self._backoff.reset()
            if self._flush_task is None or self._flush_task.done():
                self._flush_task = asyncio.get_running_loop().create_task(self._flush())
        elif isinstance(exc, PublishRefused):
            self._counters.publish_refusals += 1
            self._state = f"refused:{exc.reason}"
            log.warning("uplink.publish_refused", reason=exc.reason, code=exc.reason_code)
            self._spawn(self._audit("uplink.publish_refused", exc.reason))
            self._end_session(f"publish refused ({exc.reason})")
        # Any other failure is the link dying; _watch_link ends the session.

    async def _flush(self) -> None:
        """Mark every acknowledged reading delivered; PUBACKs arriving meanwhile are batched
        into the next vault transaction."""
        async with self._flush_lock:
            while self._acked:
                ids, self._acked = self._acked, []
                try:
                    await self._vault.mark_delivered(ids)
                except EdgeError as exc:
                    # They stay pending and are sent again: a duplicate, never a loss.
                    log.error("uplink.mark_delivered_failed", n=len(ids), error=type(exc).__name__)
                    continue
                self._counters.readings_delivered += len(ids)
                if self._on_delivered is not None:
                    self._on_delivered(ids)

    async def _ack_watchdog(self, link: Link) -> None:
        timeout = self._cfg.ack_timeout_s
        while True:
            now = self._clock.monotonic()
            oldest = next(iter(self._inflight.values()), None)
            if oldest is None:
                await self._clock.sleep(timeout)
                continue
            due = oldest.sent_at + timeout
            if due <= now:
                self._counters.ack_timeouts += 1
                log.warning("uplink.ack_timeout", in_flight=len(self._inflight))
                raise _SessionEnd("PUBACK not received in time")
            await self._clock.sleep(due - now)

    # --- status ----------------------------------------------------------------------------

    async def status_document(self) -> dict[str, Any]:
        """The retained online status: queue, devices, certificate — no PHI."""
        st = await self._vault.stats()
        doc: dict[str, Any] = {
            "hub": self._hub,
            "state": "online",
            "at": self._clock.now().isoformat().replace("+00:00", "Z"),
            "queue_depth": st.pending,
            "oldest_pending_age_s": st.oldest_pending_age_s,
            "delivered": self._counters.readings_delivered,
        }
        if self._cert_not_after is not None:
            doc["cert_days_left"] = days_left(self._cert_not_after, self._clock.now())
        if self._status_provider is not None:
            try:
                doc["devices"] = await self._status_provider()
            except Exception as exc:
                log.warning("uplink.status_provider_failed", error=type(exc).__name__)
        return doc

    async def _status_loop(self, link: Link) -> None:
        while True:
            doc = await self.status_document()
            payload = json.dumps(doc, separators=(",", ":"), default=str).encode()
            fut = link.publish(self._status_topic, payload, retain=True)
            try:
                await fut
            except PublishRefused as exc:
                self._counters.publish_refusals += 1
                self._state = f"refused:{exc.reason}"
                log.warning("uplink.status_refused", reason=exc.reason, code=exc.reason_code)
                await self._audit("uplink.publish_refused", exc.reason)
                raise _SessionEnd(f"status refused ({exc.reason})") from exc
            self._backoff.reset()
            await self._clock.sleep(self._cfg.status_interval_s)
