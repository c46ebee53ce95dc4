"""In-memory stand-ins for the forwarder's collaborators: an outbox, a link, a link factory,
and a clock that records what it was asked to sleep. Used by the uplink unit tests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from edge.testing import ManualClock
from edge.errors import UplinkUnavailable
from edge.readings import (
    GlucoseReading,
    HeartRateReading,
    TimeSource,
    reading_from_json,
    stable_reading_id,
)
from edge.uplink.mqtt import LinkInfo, Will
from edge.uplink.pins import PinCheck


@dataclass(frozen=True)
class Row:
    seq: int
    id: str
    patient: str
    payload: bytes
    kind: str = "heart_rate"

    def reading(self) -> HeartRateReading | GlucoseReading:
        return reading_from_json(self.payload)


T0 = datetime(2026, 3, 15, 8, 30, tzinfo=UTC)


def make_readings(
    n: int, patients: Sequence[str] = ("patient-a",), *, start: int = 0
) -> list[HeartRateReading | GlucoseReading]:
    """``n`` plausible readings (every fifth a glucose reading), round-robin over patients."""
    out: list[HeartRateReading | GlucoseReading] = []
    for i in range(start, start + n):
        patient = patients[i % len(patients)]
        addr = f"AA:BB:CC:DD:{(i % len(patients)) // 256:02X}:{(i % len(patients)) % 256:02X}"
        t = T0 + timedelta(seconds=i)
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


def ids_encoder(rows: Sequence[Any]) -> bytes:
    """A stand-in for the FHIR encoder: the ids, as JSON."""
    return json.dumps({"ids": [r.id for r in rows]}).encode()


@dataclass
class Stats:
    pending: int
    oldest_pending_age_s: float | None


@dataclass
class FakeOutbox:
    rows: dict[int, Row] = field(default_factory=dict)
    delivered: list[str] = field(default_factory=list)
    audits: list[tuple[str, str, str]] = field(default_factory=list)
    batch_calls: list[tuple[int, int]] = field(default_factory=list)
    _seq: int = 0

    def add(self, patient: str, n: int = 1, payload_size: int = 200) -> list[str]:
        ids = []
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


@dataclass
class Sent:
    topic: str
    payload: bytes
    retain: bool
    content_type: str | None
    message_expiry_s: int | None
    future: asyncio.Future[None]

    @property
    def ids(self) -> list[str]:
        return list(json.loads(self.payload).get("ids", []))


class FakeLink:
    """A link whose PUBACKs the test gives (``ack``/``fail``) and which the test can drop."""

    def __init__(self, *, auto_ack_retained: bool = True) -> None:
        #: acknowledge retained (status) messages at once, so tests deal with readings only
        self.auto_ack_retained = auto_ack_retained
        self.sent: list[Sent] = []
        self._closed: asyncio.Future[BaseException | None] = (
            asyncio.get_running_loop().create_future()
        )
        self.sent_event = asyncio.Event()
        self.closed_cleanly = False

    @property
    def info(self) -> LinkInfo:
        return LinkInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", PinCheck("p", "leaf", "p"), "5")

    @property
    def is_closed(self) -> bool:
        return self._closed.done()

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        content_type: str | None = None,
        message_expiry_s: int | None = None,
    ) -> asyncio.Future[None]:
        if self.is_closed:
            raise UplinkUnavailable("closed")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sent.append(Sent(topic, payload, retain, content_type, message_expiry_s, fut))
        self.sent_event.set()
        if retain and self.auto_ack_retained:
            fut.set_result(None)
        return fut

    def obs(self) -> list[Sent]:
        return [s for s in self.sent if "/obs/" in s.topic]

    def unacked_obs(self) -> list[Sent]:
        return [s for s in self.obs() if not s.future.done()]

    def ack(self, sent: Sent) -> None:
        sent.future.set_result(None)

    def ack_status(self) -> None:
        for s in self.sent:
            if s.topic.endswith("/status") and not s.future.done():
                s.future.set_result(None)

    def fail(self, sent: Sent, exc: BaseException) -> None:
        sent.future.set_exception(exc)

    async def wait_closed(self) -> BaseException | None:
        return await asyncio.shield(self._closed)

    async def close(self) -> None:
        self.closed_cleanly = True
        self.abort()

    def abort(self) -> None:
        if self.is_closed:
            return
        for s in self.sent:
            if not s.future.done():
                s.future.set_exception(UplinkUnavailable("lost"))
        self._closed.set_result(UplinkUnavailable("dropped"))

    def drop(self) -> None:
        """The connection dies (as seen from the network)."""
        self.abort()


class FakeFactory:
    """Hands out the outcomes queued in ``outcomes`` (a FakeLink is made for ``"link"``)."""

    def __init__(self, outcomes: Sequence[Any] = ()) -> None:
        self.outcomes: list[Any] = list(outcomes)
        self.links: list[FakeLink] = []
        self.calls = 0
        self.wills: list[Will | None] = []
        self.called = asyncio.Event()
        self.linked = asyncio.Event()

    async def __call__(self, will: Will | None) -> FakeLink:
        self.calls += 1
        self.wills.append(will)
        self.called.set()
        outcome = self.outcomes.pop(0) if self.outcomes else "link"
        if isinstance(outcome, BaseException):
            raise outcome
        link = FakeLink()
        self.links.append(link)
        self.linked.set()
        return link


class RecordingClock(ManualClock):
    """A manual clock that also records every requested sleep."""

    def __init__(self) -> None:
        super().__init__()
        self.requested: list[float] = []
        self.slept = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        self.requested.append(seconds)
        self.slept.set()
        await super().sleep(seconds)


async def until(pred: Any, limit_s: float = 5.0, step_s: float = 0.0) -> None:
    """Let the event loop run until ``pred()`` is true; fails after ``limit_s``.

    The conditions are plain state of the objects under test (counters, dicts, a state
    string); polling them on the loop is the bounded wait, not a sleep standing in for one."""
    async with asyncio.timeout(limit_s):
        while not pred():  # noqa: ASYNC110
            await asyncio.sleep(step_s)


# --- wrapping the real connector -------------------------------------------------------------


@dataclass
class Published:
    """One observation message sent on a real link, and what became of it."""

    ids: list[str]
    acked: bool | None = None  # None: no answer (yet); False: failed / connection lost


def bundle_ids(payload: bytes) -> list[str]:
    """Observation ids in a FHIR Bundle payload."""
    doc = json.loads(payload)
    out = []
    for entry in doc.get("entry", []):
        res = entry.get("resource", {})
        if res.get("resourceType") == "Observation":
            out += [
                i["value"].removeprefix("urn:uuid:")
                for i in res.get("identifier", [])
                if i.get("value", "").startswith("urn:uuid:")
            ]
    return out


class RecordingLink:
    """Wraps a real link: records which readings each message carried and its outcome."""

    def __init__(self, inner: Any, log: list[Published]) -> None:
        self.inner = inner
        self.log = log

    @property
    def info(self) -> Any:
        return self.inner.info

    @property
    def is_closed(self) -> bool:
        return bool(self.inner.is_closed)

    def publish(self, topic: str, payload: bytes, **kw: Any) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = self.inner.publish(topic, payload, **kw)
        if "/obs/" in topic:
            rec = Published(bundle_ids(payload))
            self.log.append(rec)

            def done(f: asyncio.Future[None], rec: Published = rec) -> None:
                rec.acked = not f.cancelled() and f.exception() is None

            fut.add_done_callback(done)
        return fut

    async def wait_closed(self) -> BaseException | None:
        return await self.inner.wait_closed()  # type: ignore[no-any-return]

    async def close(self) -> None:
        await self.inner.close()

    def abort(self) -> None:
        self.inner.abort()


class RecordingConnector:
    """Wraps the real connector; ``gate`` (when set) holds connection attempts until it opens."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.log: list[Published] = []
        self.links: list[RecordingLink] = []
        self.attempts = 0
        self.errors: list[BaseException] = []
        self.gate: asyncio.Event | None = None

    async def __call__(self, will: Will | None) -> RecordingLink:
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


@asynccontextmanager
async def forwarding(fwd: Any) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``fwd.run()`` for the block; then cancel it and see that it stopped by cancelling."""
    task = asyncio.create_task(fwd.run())
    try:
        yield task
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
