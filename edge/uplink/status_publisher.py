"""The forwarder's retained status on the hub's status topic.

Online: queue, refusal counts, what keeps the hub from doing its job (``degraded``), devices
and certificate days, published on every connection and then every ``status_interval_s``
(the forwarder's loop). Offline: the Last Will (the broker says it when the connection dies)
and the same document sent on a clean stop, because the broker drops the Will after a
DISCONNECT. No PHI; the documents themselves are built in :mod:`edge.uplink.topics`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import datetime

from edge.clock import Clock
from edge.errors import VaultCorrupt, VaultError
from edge.log import get_logger
from edge.uplink.ports import MqttLink, Outbox, OutboxStats, StatusProvider, Will
from edge.uplink.stats import Counters
from edge.uplink.tls import days_left
from edge.uplink.topics import (
    DegradedWatch,
    offline_document,
    online_document,
    refusal_counts,
    status_topic,
)

log = get_logger("edge.uplink")


class StatusPublisher:
    """Builds and sends one hub's status documents; the forwarder owns one for its lifetime
    (the ``degraded`` watch remembers refusals across connections)."""

    def __init__(
        self,
        hub_id: str,
        topic_prefix: str,
        outbox: Outbox,
        clock: Clock,
        counters: Counters,
        *,
        provider: StatusProvider | None = None,
        cert_not_after: datetime | None = None,
    ) -> None:
        self._hub = hub_id
        self._outbox = outbox
        self._clock = clock
        #: the forwarder's, read when each document is built (readings delivered so far)
        self._counters = counters
        self._provider = provider
        self._degraded = DegradedWatch()
        self._cert_not_after = cert_not_after
        self._topic = status_topic(topic_prefix, hub_id)
        #: given to every CONNECT: the broker publishes it (retained) if the link dies
        self.will = Will(self._topic, offline_document(hub_id))

    async def document(self) -> dict[str, object]:
        """The retained online status: queue, refusal counts, ``degraded`` (what keeps the hub
        from doing its job now: recent disk_full / vault_full / no_consent refusals, bound
        devices without consent, an unhealthy part, a failing vault), devices, certificate
        — no PHI (built by :func:`~edge.uplink.topics.online_document`)."""
        now = self._clock.now()
        degraded: list[str] = []
        try:
            st: OutboxStats | None = await self._outbox.stats()
        except VaultError as exc:  # the status must still go out, saying so
            log.warning("uplink.status_vault_failed", error=type(exc).__name__)
            st = None
            degraded.append("vault_damaged" if isinstance(exc, VaultCorrupt) else "vault_error")
        degraded += self._degraded.observe(refusal_counts(st), self._clock.monotonic())
        devices = None
        if self._provider is not None:
            try:
                devices = await self._provider()
            except Exception as exc:  # a status part must never end the session
                log.warning("uplink.status_provider_failed", error=type(exc).__name__)
        cert = None if self._cert_not_after is None else days_left(self._cert_not_after, now)
        return online_document(self._hub, now, st, delivered=self._counters.readings_delivered,
                               degraded=degraded, cert_days_left=cert, devices=devices)

    async def run(self, link: MqttLink, interval_s: float, acked: Callable[[], None]) -> None:
        """Publish the online document now and every ``interval_s``, retained, calling
        ``acked`` after each PUBACK; until cancelled, or until a refusal (raised as
        :class:`~edge.uplink.ports.PublishRefused`) or a lost link ends it."""
        while True:
            doc = await self.document()
            payload = json.dumps(doc, separators=(",", ":"), default=str).encode()
            await link.publish(self._topic, payload, retain=True)
            acked()
            await self._clock.sleep(interval_s)

    def send_offline(self, link: MqttLink) -> asyncio.Future[None]:
        """Publish the offline document, retained (a clean stop); returns its PUBACK future."""
        return link.publish(self._topic, offline_document(self._hub), retain=True)
