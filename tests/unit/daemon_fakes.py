"""Fakes for the daemon's unit tests: an in-memory vault (used only where the real one is not
the point), a BLE manager driven by the test, and an MQTT link that records publishes."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from edge.errors import VaultFull
from edge.readings import GlucoseReading, HeartRateReading
from edge.uplink.mqtt import LinkInfo, Will
from edge.uplink.pins import PinCheck

AnyReading = HeartRateReading | GlucoseReading


@dataclass
class Row:
    seq: int
    id: str
    patient: str
    payload: bytes
    delivered: bool = False

    def reading(self) -> AnyReading:
        from edge.readings import reading_from_json

        return reading_from_json(self.payload)


@dataclass
class Stats:
    pending: int
    oldest_pending_age_s: float | None
    db_bytes: int = 0
    pending_bytes: int = 0
    delivered_retained: int = 0
    refusals: dict[str, int] = field(default_factory=dict)


@dataclass
class Consent:
    patient: str
    scope: str
    granted_at: datetime
    revoked_at: datetime | None = None


class MemoryVault:
    """The vault contract, in memory."""

    def __init__(self, max_pending: int = 1000) -> None:
        self.rows: list[Row] = []
        self.refusals: Counter[str] = Counter()
        self.consent: dict[str, Consent] = {}
        self.audits: list[tuple[str, str, str]] = []
        self.max_pending = max_pending
        self.closed = False
        self.cursors: dict[str, int] = {}
        self._seq = 0

    def append(self, readings: Sequence[AnyReading]) -> int:
        pending = sum(1 for r in self.rows if not r.delivered)
        if pending + len(readings) > self.max_pending:
            self.refusals["vault_full_count"] += len(readings)
            raise VaultFull("vault_full_count", "the vault is full")
        known = {r.id for r in self.rows}
        n = 0
        for r in readings:
            if r.id in known:
                continue
            self._seq += 1
            self.rows.append(Row(self._seq, r.id, r.patient, r.model_dump_json().encode()))
            n += 1
        return n

    def commit_glucose(self, address: str, readings: Sequence[GlucoseReading], *,
                       last_sequence: int, last_device_time: datetime | None,
                       clock_offset_s: int) -> int:
        n = self.append(readings)
        self.cursors[address] = last_sequence
        return n

    def count_refusal(self, reason: str, n: int = 1) -> None:
        self.refusals[reason] += n

    def stats(self) -> Stats:
        pending = [r for r in self.rows if not r.delivered]
        return Stats(len(pending), 0.0 if pending else None, refusals=dict(self.refusals))

    def bindings(self) -> list[Any]:
        return []

    def cursor(self, address: str) -> None:
        return None

    def touch_device(self, address: str, seen_at: datetime) -> None:
        return None

    def grant_consent(self, patient: str, *, scope: str, actor: str) -> None:
        self.consent[patient] = Consent(patient, scope, datetime.now(UTC))
        self.audits.append((actor, "consent.grant", patient))

    def revoke_consent(self, patient: str, *, actor: str) -> int:
        c = self.consent.get(patient)
        if c is not None:
            c.revoked_at = datetime.now(UTC)
        before = len(self.rows)
        self.rows = [r for r in self.rows if r.delivered or r.patient != patient]
        self.audits.append((actor, "consent.revoke", patient))
        return before - len(self.rows)

    def has_consent(self, patient: str) -> bool:
        c = self.consent.get(patient)
        return c is not None and c.revoked_at is None

    def consents(self) -> list[Consent]:
        return list(self.consent.values())

    def purge_delivered(self) -> int:
        return 0

    def audit(self, actor: str, action: str, subject: str = "") -> None:
        self.audits.append((actor, action, subject))

    def next_batch(self, limit: int, *, after_seq: int = 0) -> list[Row]:
        return [r for r in self.rows if not r.delivered and r.seq > after_seq][:limit]

    def mark_delivered(self, ids: Sequence[str]) -> int:
        wanted = set(ids)
        n = 0
        for r in self.rows:
            if r.id in wanted and not r.delivered:
                r.delivered = True
                n += 1
        return n

    def close(self) -> None:
        self.closed = True


class FakeBle:
    """A BLE manager whose ``run`` waits; the test submits readings through the sink."""

    def __init__(self, vault: Any, sink: Any) -> None:
        self.vault = vault
        self.sink = sink
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.refreshed = 0
        self.runs = 0
        self.fail = False
        self.unhung = asyncio.Event()
        self.unhung.set()

    async def probe(self) -> None:
        """Hangs while ``hang`` is set: a part that stopped making progress."""
        await self.unhung.wait()

    async def run(self) -> None:
        self.runs += 1
        if self.fail:
            raise RuntimeError("ble part failed")
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def refresh(self) -> None:
        self.refreshed += 1

    def device_states(self) -> dict[str, dict[str, Any]]:
        return {"AA:BB:CC:DD:EE:01": {"address": "AA:BB:CC:DD:EE:01", "kind": "heart_rate",
                                      "state": "connected", "last_seen": None}}


class FakeLink:
    """An MQTT link: records publishes; acks them at once unless ``hold`` is set."""

    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker
        self._closed = asyncio.get_running_loop().create_future()

    @property
    def info(self) -> LinkInfo:
        return LinkInfo("TLSv1.3", "TLS_AES_128_GCM_SHA256",
                        PinCheck(matched="sha256/x", matched_on="leaf", presented="sha256/x"), "5")

    @property
    def is_closed(self) -> bool:
        return self._closed.done()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False,
                content_type: str | None = None,
                message_expiry_s: int | None = None) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.broker.messages.append((topic, payload))
        if "/obs/" in topic:
            for e in json.loads(payload)["entry"]:
                res = e["resource"]
                if res.get("resourceType") == "Observation":
                    self.broker.observations.append(
                        (topic, res["identifier"][0]["value"].removeprefix("urn:uuid:")))
        if self.broker.hold:
            self.broker.held.append(fut)
        else:
            fut.set_result(None)
        self.broker.published.set()
        return fut

    async def wait_closed(self) -> BaseException | None:
        return await asyncio.shield(self._closed)

    async def close(self) -> None:
        if not self._closed.done():
            self._closed.set_result(None)

    def abort(self) -> None:
        if not self._closed.done():
            self._closed.set_result(None)


class FakeBroker:
    """Collects what the fake links publish."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.observations: list[tuple[str, str]] = []
        self.hold = False
        self.held: list[asyncio.Future[None]] = []
        self.published = asyncio.Event()
        self.links: list[FakeLink] = []

    async def connect(self, will: Will | None) -> FakeLink:
        link = FakeLink(self)
        self.links.append(link)
        return link

    def release(self) -> None:
        for fut in self.held:
            if not fut.done():
                fut.set_result(None)
        self.held.clear()
