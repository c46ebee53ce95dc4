"""The uplink tests' rig: an in-memory outbox, readings to fill it, a clock that records what
it was asked to sleep, and a recording wrapper around the real connector. The fake link and
connector themselves ship in :mod:`edge.testing.uplink`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from edge.clock import SystemClock
from edge.config import UplinkConfig
from edge.readings import (
    GlucoseReading,
    HeartRateReading,
    TimeSource,
    reading_from_json,
    stable_reading_id,
)
from edge.testing import ManualClock
from edge.testing.uplink import AllowAll
from edge.uplink.forwarder import Forwarder
from edge.uplink.mqtt import TlsMqttConnector
from edge.uplink.ports import Connector, LinkInfo, MqttLink, Outbox, Will
from edge.uplink.tls import client_cert_not_after


@dataclass(frozen=True)
class Row:
    """One pending row (an :class:`edge.uplink.ports.PendingLike`)."""

    seq: int
    id: str
    patient: str
    payload: bytes
    kind: str = "heart_rate"

    def reading(self) -> HeartRateReading | GlucoseReading:
        return reading_from_json(self.payload)


T0 = datetime(2026, 3, 15, 8, 30, tzinfo=UTC)


def make_readings(
    n: int, patients: Sequence[str] = ("patient-a",), *, start: int = 0,
    per_patient_clock: bool = False,
) -> list[HeartRateReading | GlucoseReading]:
    """``n`` plausible readings (every fifth a glucose reading), round-robin over patients:
    one a second in all, or with ``per_patient_clock`` one a second for each patient (as
    each patient's strap sends them)."""
    out: list[HeartRateReading | GlucoseReading] = []
    for i in range(start, start + n):
        patient = patients[i % len(patients)]
        addr = f"AA:BB:CC:DD:{(i % len(patients)) // 256:02X}:{(i % len(patients)) % 256:02X}"
        t = T0 + timedelta(seconds=i // len(patients) if per_patient_clock else i)
        if i % 5 == 4:
            mg = Decimal(90 + i % 50)
            out.append(
                GlucoseReading(
                    id=stable_reading_id(addr, "2a18", str(i)), device_id=addr, patient=patient,
                    effective_time=t, time_source=TimeSource.DEVICE_CORRECTED, received_at=t,
                    sequence_number=i, device_time=t.replace(tzinfo=None),
                    concentration=mg.scaleb(-5), unit="kg/L", mg_dl=mg,
                    mmol_l=(mg / Decimal("18.0156")).quantize(Decimal("0.01")),
                    sample_type="capillary_whole_blood", sample_location="finger",
                )
            )
        else:
            out.append(
                HeartRateReading(
                    id=stable_reading_id(addr, "2a37", t.isoformat()), device_id=addr,
                    patient=patient, effective_time=t, time_source=TimeSource.GATEWAY,
                    received_at=t, bpm=60 + i % 40, sensor_contact="detected",
                )
            )
    return out


@dataclass
class Stats:
    """The outbox statistics the status document reads."""

    pending: int
    oldest_pending_age_s: float | None


@dataclass
class FakeOutbox:
    """An in-memory outbox: rows by sequence number; records deliveries, audits and reads."""

    rows: dict[int, Row] = field(default_factory=dict)
    delivered: list[str] = field(default_factory=list)
    audits: list[tuple[str, str, str]] = field(default_factory=list)
    batch_calls: list[tuple[int, int]] = field(default_factory=list)
    _seq: int = 0

    def add(self, patient: str, n: int = 1, payload_size: int = 200) -> list[str]:
        ids: list[str] = []
        for _ in range(n):
            self._seq += 1
            rid = f"r{self._seq:06d}"
            self.rows[self._seq] = Row(self._seq, rid, patient, b"x" * payload_size)
            ids.append(rid)
        return ids

    def add_readings(self, readings: Sequence[HeartRateReading | GlucoseReading]) -> list[str]:
        for r in readings:
            self._seq += 1
            self.rows[self._seq] = Row(
                self._seq, r.id, r.patient, r.model_dump_json().encode(), r.kind
            )
        return [r.id for r in readings]

    async def next_batch(self, limit: int, *, after_seq: int = 0) -> list[Row]:
        self.batch_calls.append((limit, after_seq))
        out = [r for s, r in sorted(self.rows.items()) if s > after_seq]
        return out[:limit]

    async def mark_delivered(self, ids: Sequence[str]) -> int:
        wanted = set(ids)
        gone = [s for s, r in self.rows.items() if r.id in wanted]
        for s in gone:
            del self.rows[s]
        self.delivered.extend(ids)
        return len(gone)

    def pending_ids(self) -> set[str]:
        return {r.id for r in self.rows.values()}

    async def stats(self) -> Stats:
        return Stats(pending=len(self.rows), oldest_pending_age_s=1.5 if self.rows else None)

    async def audit(self, actor: str, action: str, subject: str = "") -> None:
        self.audits.append((actor, action, subject))


class RecordingClock(ManualClock):
    """A manual clock that also records every requested sleep."""

    def __init__(self) -> None:
        super().__init__()
        self.requested: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.requested.append(seconds)
        await super().sleep(seconds)


# --- wrapping the real connector -------------------------------------------------------------


@dataclass
class Published:
    """One observation message sent on a real link, and what became of it."""

    ids: list[str]
    acked: bool | None = None  # None: no answer (yet); False: failed / connection lost


def bundle_ids(payload: bytes) -> list[str]:
    """Observation ids in a FHIR Bundle payload."""
    doc = json.loads(payload)
    out: list[str] = []
    for entry in doc.get("entry", []):
        res = entry.get("resource", {})
        if res.get("resourceType") == "Observation":
            out += [
                str(i["value"]).removeprefix("urn:uuid:")
                for i in res.get("identifier", [])
                if str(i.get("value", "")).startswith("urn:uuid:")
            ]
    return out


class RecordingLink:
    """Wraps a real link: records which readings each message carried and its outcome."""

    def __init__(self, inner: MqttLink, log: list[Published]) -> None:
        self.inner = inner
        self.log = log

    @property
    def info(self) -> LinkInfo:
        return self.inner.info

    @property
    def is_closed(self) -> bool:
        return self.inner.is_closed

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        content_type: str | None = None,
        message_expiry_s: int | None = None,
    ) -> asyncio.Future[None]:
        fut = self.inner.publish(
            topic, payload, retain=retain, content_type=content_type,
            message_expiry_s=message_expiry_s,
        )
        if "/obs/" in topic:
            rec = Published(bundle_ids(payload))
            self.log.append(rec)

            def done(f: asyncio.Future[None], rec: Published = rec) -> None:
                rec.acked = not f.cancelled() and f.exception() is None

            fut.add_done_callback(done)
        return fut

    async def wait_closed(self) -> BaseException | None:
        return await self.inner.wait_closed()

    async def close(self) -> None:
        await self.inner.close()

    def abort(self) -> None:
        self.inner.abort()


class RecordingConnector:
    """Wraps the real connector; ``gate`` (when set) holds connection attempts until it opens."""

    def __init__(self, inner: Connector) -> None:
        self.inner = inner
        self.log: list[Published] = []
        self.links: list[RecordingLink] = []
        self.attempts = 0
        self.errors: list[BaseException] = []
        self.gate: asyncio.Event | None = None

    async def __call__(self, will: Will) -> RecordingLink:
        if self.gate is not None:
            await self.gate.wait()
        self.attempts += 1
        try:
            link = RecordingLink(await self.inner(will), self.log)
        except BaseException as exc:
            self.errors.append(exc)
            raise
        self.links.append(link)
        return link

    def acked_ids(self) -> set[str]:
        return {i for p in self.log if p.acked for i in p.ids}

    def unacked_ids(self) -> set[str]:
        return {i for p in self.log if not p.acked for i in p.ids}


def real_forwarder(
    cfg: UplinkConfig,
    hub_id: str,
    outbox: Outbox,
    *,
    connector: Connector | None = None,
    on_delivered: Callable[[Sequence[str]], None] | None = None,
) -> Forwarder:
    """A forwarder wired as the daemon wires it: the TLS connector (unless given), the system
    clock, the client certificate's expiry; consent for everyone."""
    return Forwarder(
        cfg, hub_id, outbox,
        connector=connector or TlsMqttConnector(cfg, hub_id),
        clock=SystemClock(),
        consent=AllowAll(),
        cert_not_after=client_cert_not_after(cfg),
        on_delivered=on_delivered,
    )
