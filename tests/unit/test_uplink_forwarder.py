"""The forwarder against an in-memory outbox and a fake link: batching, the window,
ack-before-delete, re-send after a lost connection, ack timeout, refusals, backoff, status."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import pytest

from edge.backoff import BackoffPolicy
from edge.config import UplinkConfig
from edge.errors import PinMismatch, TlsVerificationError, UplinkUnavailable
from edge.uplink.forwarder import FHIR_CONTENT_TYPE, Forwarder
from edge.uplink.mqtt import PublishRefused
from tests.support.uplink_fakes import (
    FakeFactory,
    FakeOutbox,
    RecordingClock,
    ids_encoder,
    until,
)
from tests.support.uplink_fakes import (
    forwarding as running,
)

PIN = "sha256/" + "A" * 43 + "="


def make_cfg(**kw: Any) -> UplinkConfig:
    data: dict[str, Any] = {
        "host": "127.0.0.1",
        "ca_file": Path("/nonexistent/ca.crt"),
        "client_cert": Path("/nonexistent/hub.crt"),
        "client_key": Path("/nonexistent/hub.key"),
        "pins": [PIN],
        "batch_max_readings": 3,
        "inflight_window": 2,
        "ack_timeout_s": 30,
        "status_interval_s": 60,
    }
    data.update(kw)
    return UplinkConfig.model_validate(data)


def make(
    outbox: FakeOutbox, factory: FakeFactory, clock: RecordingClock | None = None, **cfg: Any
) -> tuple[Forwarder, RecordingClock]:
    clock = clock or RecordingClock()
    fwd = Forwarder(
        make_cfg(**cfg), "hub-1", outbox, link_factory=factory, clock=clock,
        rng=random.Random(7), encoder=ids_encoder,
    )
    return fwd, clock


async def test_groups_by_patient_and_marks_delivered_only_after_its_own_puback() -> None:
    outbox = FakeOutbox()
    a = outbox.add("patient-a", 4)
    b = outbox.add("patient-b", 1)
    factory = FakeFactory()
    fwd, _ = make(outbox, factory, inflight_window=10)
    async with running(fwd):
        await until(lambda: factory.links and len(factory.links[0].obs()) == 3)
        link = factory.links[0]
        msgs = link.obs()
        assert [m.topic for m in msgs] == [
            "edge/v1/hub-1/obs/patient-a",
            "edge/v1/hub-1/obs/patient-a",
            "edge/v1/hub-1/obs/patient-b",
        ]
        assert [m.ids for m in msgs] == [a[:3], a[3:], b]
        assert all(m.content_type == FHIR_CONTENT_TYPE and m.message_expiry_s for m in msgs)
        assert all(not m.retain for m in msgs)
        # Nothing is delivered before a PUBACK.
        assert outbox.delivered == []
        link.ack(msgs[2])
        await until(lambda: outbox.delivered == b)
        assert outbox.pending_ids() == set(a)
        link.ack(msgs[0])
        link.ack(msgs[1])
        await until(lambda: not outbox.rows)
        assert fwd.stats()["readings_delivered"] == 5
        assert fwd.state == "connected"


async def test_window_limits_messages_awaiting_puback() -> None:
    outbox = FakeOutbox()
    outbox.add("p", 30)
    factory = FakeFactory()
    fwd, _ = make(outbox, factory, inflight_window=2, batch_max_readings=3)
    async with running(fwd):
        await until(lambda: factory.links and len(factory.links[0].obs()) == 2)
        link = factory.links[0]
        for _ in range(10):
            await asyncio.sleep(0)
        assert len(link.unacked_obs()) == 2  # the window holds
        acked = 0
        while outbox.rows:
            pending = link.unacked_obs()
            assert 1 <= len(pending) <= 2
            link.ack(pending[0])
            acked += 1
            await until(lambda n=acked: len(link.obs()) >= min(n + 2, 10) or not outbox.rows)
            if acked == 10:
                break
        await until(lambda: not outbox.rows)
        assert len(link.obs()) == 10
        # Every message carried a full batch of three.
        assert all(len(m.ids) == 3 for m in link.obs())


async def test_lost_connection_resends_exactly_the_unacknowledged() -> None:
    outbox = FakeOutbox()
    ids = outbox.add("p", 9)
    factory = FakeFactory()
    fwd, clock = make(outbox, factory, inflight_window=3, batch_max_readings=3)
    async with running(fwd):
        await until(lambda: factory.links and len(factory.links[0].obs()) == 3)
        first = factory.links[0]
        m1, m2, m3 = first.obs()
        first.ack(m2)
        await until(lambda: set(outbox.delivered) == set(m2.ids))
        first.drop()
        await until(lambda: fwd.state == "backoff")
        assert fwd.stats()["in_flight"] == 0
        # Still pending: what was sent but never acknowledged.
        assert outbox.pending_ids() == set(m1.ids) | set(m3.ids)
        clock.step(60)
        await until(lambda: len(factory.links) == 2 and len(factory.links[1].obs()) == 2)
        second = factory.links[1]
        resent = [i for m in second.obs() for i in m.ids]
        assert resent == m1.ids + m3.ids  # oldest first, nothing acknowledged re-sent
        for m in second.obs():
            second.ack(m)
        await until(lambda: not outbox.rows)
        assert sorted(outbox.delivered) == sorted(ids)


async def test_failed_puback_leaves_readings_pending_and_backs_off() -> None:
    outbox = FakeOutbox()
    ids = outbox.add("p", 2)
    factory = FakeFactory()
    fwd, _ = make(outbox, factory)
    async with running(fwd):
        await until(lambda: factory.links and factory.links[0].obs())
        link = factory.links[0]
        link.fail(link.obs()[0], PublishRefused(0x87))
        await until(lambda: fwd.state == "refused:not_authorised" and link.is_closed)
        assert outbox.delivered == []
        assert outbox.pending_ids() == set(ids)
        assert ("uplink", "uplink.publish_refused", "not_authorised") in outbox.audits


async def test_ack_timeout_drops_the_link_and_resends() -> None:
    outbox = FakeOutbox()
    outbox.add("p", 1)
    factory = FakeFactory()
    fwd, clock = make(outbox, factory, ack_timeout_s=5)
    async with running(fwd):
        await until(lambda: factory.links and factory.links[0].obs())
        link = factory.links[0]
        clock.step(4.9)
        for _ in range(10):
            await asyncio.sleep(0)
        assert not link.is_closed
        clock.step(0.2)
        await until(lambda: link.is_closed)
        assert fwd.stats()["ack_timeouts"] == 1
        assert outbox.delivered == []
        clock.step(60)
        await until(lambda: len(factory.links) == 2 and factory.links[1].obs())
        assert factory.links[1].obs()[0].ids == link.obs()[0].ids


async def test_pin_mismatch_is_audited_nothing_sent_and_retried_with_backoff() -> None:
    presented = "sha256/" + "B" * 43 + "="
    outbox = FakeOutbox()
    outbox.add("p", 1)
    factory = FakeFactory([PinMismatch(presented), PinMismatch(presented)])
    fwd, clock = make(outbox, factory)
    async with running(fwd):
        await until(lambda: fwd.state == "refused:pin_mismatch" and clock.sleepers == 1)
        assert outbox.audits == [("uplink", "uplink.pin_mismatch", presented)]
        assert factory.links == []
        clock.step(60)
        await until(lambda: factory.calls == 2 and clock.sleepers == 1)
        # The same refusal again within the hour is logged but not re-audited.
        assert len(outbox.audits) == 1
        clock.step(60)
        await until(lambda: factory.links and factory.links[0].obs())
        assert outbox.rows  # still pending until acknowledged


@pytest.mark.parametrize("reason", ["hostname_mismatch", "certificate_expired", "unknown_ca"])
async def test_tls_refusal_state_and_audit(reason: str) -> None:
    outbox = FakeOutbox()
    factory = FakeFactory([TlsVerificationError(reason, "x")])
    fwd, clock = make(outbox, factory)
    async with running(fwd):
        await until(lambda: clock.sleepers == 1)
        assert fwd.state == f"refused:{reason}"
        assert outbox.audits == [("uplink", "uplink.tls_refused", reason)]


async def test_reconnect_delays_follow_the_seeded_policy() -> None:
    outbox = FakeOutbox()
    failures = [UplinkUnavailable("down") for _ in range(6)]
    factory = FakeFactory(failures)
    fwd, clock = make(outbox, factory, reconnect_base_s=1.0, reconnect_cap_s=8.0)
    async with running(fwd):
        for i in range(6):
            await until(lambda i=i: factory.calls == i + 1 and clock.sleepers == 1)
            assert fwd.state in ("backoff", "refused:unreachable") or fwd.state == "backoff"
            clock.step(8.0)
        await until(lambda: len(factory.links) == 1)
    policy = BackoffPolicy(base=1.0, cap=8.0)
    rng = random.Random(7)
    expected = [policy.delay(i, rng) for i in range(6)]
    backoffs = clock.requested[: len(expected)]
    assert backoffs == pytest.approx(expected)
    assert [round(policy.ceiling(i)) for i in range(6)] == [1, 2, 4, 8, 8, 8]
    assert all(policy.ceiling(i) / 2 <= d <= policy.ceiling(i) for i, d in enumerate(backoffs))


async def test_success_resets_the_backoff() -> None:
    outbox = FakeOutbox()
    factory = FakeFactory([UplinkUnavailable("down"), UplinkUnavailable("down")])
    fwd, clock = make(outbox, factory, reconnect_base_s=1.0, reconnect_cap_s=60.0)
    async with running(fwd):
        for calls in (1, 2):
            await until(lambda c=calls: factory.calls == c and clock.sleepers == 1)
            clock.step(60)
        await until(lambda: factory.links and factory.links[0].sent)
        link = factory.links[0]
        link.ack_status()
        await until(lambda: fwd.stats()["sessions"] == 1)
        await asyncio.sleep(0)
        link.drop()
        await until(lambda: len(clock.requested) >= 3 and fwd.state == "backoff")
    assert clock.requested[0] <= 1.0
    assert 1.0 <= clock.requested[1] <= 2.0
    # after the accepted status message the next delay starts from the base again
    backoff_after = [d for d in clock.requested[2:] if d not in (60.0, 30.0)]
    assert backoff_after and backoff_after[0] <= 1.0


async def test_wake_sends_a_new_reading_at_once() -> None:
    outbox = FakeOutbox()
    factory = FakeFactory()
    fwd, _ = make(outbox, factory)
    async with running(fwd):
        await until(lambda: factory.links and factory.links[0].sent)
        link = factory.links[0]
        for _ in range(5):
            await asyncio.sleep(0)
        assert link.obs() == []
        rid = outbox.add("p", 1)
        fwd.wake()
        await until(lambda: link.obs())
        assert link.obs()[0].ids == rid


async def test_bundles_stay_under_the_byte_limit() -> None:
    outbox = FakeOutbox()
    ids = outbox.add("p", 40, payload_size=900)

    def fat(rows: Any) -> bytes:
        # ~2 KiB per reading
        return json.dumps({"ids": [r.id for r in rows], "pad": "y" * (2048 * len(rows))}).encode()

    factory = FakeFactory()
    fwd = Forwarder(
        make_cfg(batch_max_readings=50, batch_max_bytes=8192, inflight_window=50),
        "hub-1", outbox, link_factory=factory, clock=RecordingClock(), encoder=fat,
    )
    async with running(fwd):
        await until(lambda: factory.links and sum(len(m.ids) for m in factory.links[0].obs()) == 40)
        msgs = factory.links[0].obs()
        assert all(len(m.payload) <= 8192 for m in msgs)
        assert [i for m in msgs for i in m.ids] == ids


async def test_status_document_is_retained_and_phi_free() -> None:
    outbox = FakeOutbox()
    outbox.add("patient-secret", 2)

    async def devices() -> dict[str, Any]:
        return {"hr-1": "connected"}

    factory = FakeFactory()
    fwd = Forwarder(
        make_cfg(), "hub-1", outbox, link_factory=factory, clock=RecordingClock(),
        encoder=ids_encoder, status_provider=devices,
    )
    async with running(fwd):
        await until(lambda: factory.links and factory.links[0].sent)
        status = [s for s in factory.links[0].sent if s.topic == "edge/v1/hub-1/status"]
        assert status and status[0].retain
        doc = json.loads(status[0].payload)
        assert doc["state"] == "online"
        assert doc["queue_depth"] == 2
        assert doc["devices"] == {"hr-1": "connected"}
        assert "patient-secret" not in status[0].payload.decode()
    will = factory.wills[0]
    assert will is not None and will.retain and will.topic == "edge/v1/hub-1/status"
    assert json.loads(will.payload)["state"] == "offline"


async def test_cancel_says_offline_and_disconnects_cleanly() -> None:
    outbox = FakeOutbox()
    factory = FakeFactory()
    fwd, _ = make(outbox, factory)
    task = asyncio.create_task(fwd.run())
    await until(lambda: factory.links and factory.links[0].sent)
    link = factory.links[0]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert json.loads(link.sent[1].payload)["state"] == "offline"
    assert link.sent[1].retain
    assert link.closed_cleanly


async def test_status_is_republished_every_interval() -> None:
    outbox = FakeOutbox()
    factory = FakeFactory()
    fwd, clock = make(outbox, factory, status_interval_s=60)
    async with running(fwd):
        await until(lambda: factory.links and factory.links[0].sent)
        link = factory.links[0]
        await until(lambda: 60 in clock.requested)
        outbox.add("p", 3)
        clock.step(60)
        await until(lambda: len([s for s in link.sent if s.retain]) == 2)
        docs = [json.loads(s.payload) for s in link.sent if s.retain]
        assert [d["queue_depth"] for d in docs] == [0, 3]


async def test_a_row_that_does_not_encode_stays_pending_and_the_rest_goes() -> None:
    outbox = FakeOutbox()
    good = outbox.add("p", 2)
    bad = outbox.add("p", 1)
    more = outbox.add("p", 1)

    def picky(rows: Any) -> bytes:
        if any(r.id in bad for r in rows):
            raise ValueError("corrupt")
        return ids_encoder(rows)

    factory = FakeFactory()
    fwd = Forwarder(
        make_cfg(batch_max_readings=10), "hub-1", outbox, link_factory=factory,
        clock=RecordingClock(), encoder=picky,
    )
    async with running(fwd):
        await until(lambda: factory.links and len(factory.links[0].obs()) == 3)
        link = factory.links[0]
        assert [m.ids for m in link.obs()] == [[good[0]], [good[1]], more]
        for m in link.obs():
            link.ack(m)
        await until(lambda: outbox.pending_ids() == set(bad))
        assert fwd.stats()["unencodable"] == 1
        assert fwd.state == "connected"
