"""The forwarder shell against an in-memory outbox, the shipped fake link and a manual clock:
ack-before-delete, the window, re-send after a lost connection, ack timeout, refusals, backoff,
status, consent and draining. (The packing decisions themselves: test_uplink_batching.)"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from edge.backoff import BackoffPolicy
from edge.config import UplinkConfig
from edge.errors import KeyUnavailable, PinMismatch, TlsVerificationError, UplinkUnavailable
from edge.intake.consent import ConsentCheck
from edge.testing import eventually, settle
from edge.testing.uplink import (
    AllowAll,
    FakeConnector,
    Revocable,
    forwarding,
    ids_encoder,
)
from edge.uplink.fhir_encoding import FHIR_CONTENT_TYPE
from edge.uplink.forwarder import Forwarder
from edge.uplink.ports import Encoder, PendingLike, PublishRefused
from edge.uplink.stats import ForwarderState
from tests.support.uplink_fakes import FakeOutbox, RecordingClock

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
    outbox: FakeOutbox,
    connector: FakeConnector,
    *,
    consent: ConsentCheck | None = None,
    encoder: Encoder = ids_encoder,
    ack_flush_delay_s: float = 0.1,
    **cfg: Any,
) -> tuple[Forwarder, RecordingClock]:
    clock = RecordingClock()
    fwd = Forwarder(
        make_cfg(**cfg), "hub-1", outbox, connector=connector, clock=clock,
        consent=consent or AllowAll(), rng=random.Random(7), encoder=encoder,
        ack_flush_delay_s=ack_flush_delay_s,
    )
    return fwd, clock


def label(fwd: Forwarder) -> str:
    return fwd.stats().state_label


async def connected(connector: FakeConnector, n: int = 1) -> None:
    """Wait until the n-th link was made and its first status message went out."""
    await eventually(lambda: len(connector.links) >= n and bool(connector.links[n - 1].sent),
                     what=f"link {n} connected")


async def test_groups_by_patient_and_marks_delivered_only_after_its_own_puback() -> None:
    outbox = FakeOutbox()
    a = outbox.add("patient-a", 4)
    b = outbox.add("patient-b", 1)
    connector = FakeConnector()
    fwd, _ = make(outbox, connector, inflight_window=10)
    async with forwarding(fwd):
        await connected(connector)
        await settle()
        link = connector.link
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
        await eventually(lambda: outbox.delivered == b, what="b marked delivered")
        assert outbox.pending_ids() == set(a)
        link.ack(msgs[0], msgs[1])
        await eventually(lambda: not outbox.rows, what="a marked delivered")
        assert fwd.stats().readings_delivered == 5
        assert fwd.state is ForwarderState.CONNECTED


async def test_window_limits_messages_awaiting_puback() -> None:
    outbox = FakeOutbox()
    outbox.add("p", 30)
    connector = FakeConnector()
    fwd, _ = make(outbox, connector, inflight_window=2, batch_max_readings=3)
    async with forwarding(fwd):
        await connected(connector)
        await settle()
        link = connector.link
        assert len(link.obs()) == 2
        assert len(link.unacked_obs()) == 2  # the window holds
        for acked in range(1, 11):
            pending = link.unacked_obs()
            assert 1 <= len(pending) <= 2
            assert fwd.stats().in_flight == len(pending)
            link.ack(pending[0])
            await settle()
            assert len(link.obs()) == min(acked + 2, 10)
        await eventually(lambda: not outbox.rows, what="every reading marked delivered")
        assert len(link.obs()) == 10
        # Every message carried a full batch of three.
        assert all(len(m.ids) == 3 for m in link.obs())


async def test_lost_connection_resends_exactly_the_unacknowledged() -> None:
    outbox = FakeOutbox()
    ids = outbox.add("p", 9)
    connector = FakeConnector()
    fwd, clock = make(outbox, connector, inflight_window=3, batch_max_readings=3)
    async with forwarding(fwd):
        await connected(connector)
        await settle()
        first = connector.link
        m1, m2, m3 = first.obs()
        first.ack(m2)
        await eventually(lambda: set(outbox.delivered) == set(m2.ids), what="m2 marked")
        first.drop()
        await settle()
        assert fwd.state is ForwarderState.BACKOFF
        assert fwd.stats().in_flight == 0
        # Still pending: what was sent but never acknowledged.
        assert outbox.pending_ids() == set(m1.ids) | set(m3.ids)
        clock.step(60)
        await connected(connector, 2)
        second = connector.links[1]
        resent = [i for m in second.obs() for i in m.ids]
        assert resent == m1.ids + m3.ids  # oldest first, nothing acknowledged re-sent
        second.ack(*second.obs())
        await eventually(lambda: not outbox.rows, what="every reading marked delivered")
        assert sorted(outbox.delivered) == sorted(ids)


async def test_failed_puback_leaves_readings_pending_and_backs_off() -> None:
    outbox = FakeOutbox()
    ids = outbox.add("p", 2)
    connector = FakeConnector()
    fwd, _ = make(outbox, connector)
    async with forwarding(fwd):
        await connected(connector)
        await settle()
        link = connector.link
        link.fail(link.obs()[0], PublishRefused(0x87))
        await settle()
        assert fwd.state is ForwarderState.REFUSED and link.is_closed
        assert label(fwd) == "refused:not_authorised"
        assert fwd.stats().refusal == "not_authorised"
        assert outbox.delivered == []
        assert outbox.pending_ids() == set(ids)
        assert ("uplink", "uplink.publish_refused", "not_authorised") in outbox.audits


async def test_ack_timeout_drops_the_link_and_resends() -> None:
    outbox = FakeOutbox()
    outbox.add("p", 1)
    connector = FakeConnector()
    fwd, clock = make(outbox, connector, ack_timeout_s=5)
    async with forwarding(fwd):
        await connected(connector)
        await settle()
        link = connector.link
        assert link.obs()
        await clock.advance(4.9)
        assert not link.is_closed
        await clock.advance(0.2)
        assert link.is_closed
        assert fwd.stats().ack_timeouts == 1
        assert outbox.delivered == []
        clock.step(60)
        await connected(connector, 2)
        await settle()
        assert connector.links[1].obs()[0].ids == link.obs()[0].ids


async def test_pin_mismatch_is_audited_nothing_sent_and_retried_with_backoff() -> None:
    presented = "sha256/" + "B" * 43 + "="
    outbox = FakeOutbox()
    outbox.add("p", 1)
    connector = FakeConnector([PinMismatch(presented), PinMismatch(presented)])
    fwd, clock = make(outbox, connector)
    async with forwarding(fwd):
        await settle()
        assert label(fwd) == "refused:pin_mismatch" and clock.sleepers == 1
        assert outbox.audits == [("uplink", "uplink.pin_mismatch", presented)]
        assert connector.links == []
        clock.step(60)
        await settle()
        assert connector.calls == 2 and clock.sleepers == 1
        # The same refusal again within the hour is logged but not re-audited.
        assert len(outbox.audits) == 1
        clock.step(60)
        await connected(connector)
        await settle()
        assert connector.link.obs()
        assert outbox.rows  # still pending until acknowledged


@pytest.mark.parametrize("reason", ["hostname_mismatch", "certificate_expired", "unknown_ca"])
async def test_tls_refusal_state_and_audit(reason: str) -> None:
    outbox = FakeOutbox()
    connector = FakeConnector([TlsVerificationError(reason, "x")])
    fwd, clock = make(outbox, connector)
    async with forwarding(fwd):
        await settle()
        assert clock.sleepers == 1
        assert fwd.state is ForwarderState.REFUSED
        assert label(fwd) == f"refused:{reason}"
        assert outbox.audits == [("uplink", "uplink.tls_refused", reason)]


async def test_key_unavailable_is_a_refusal() -> None:
    connector = FakeConnector([KeyUnavailable("no key")])
    fwd, clock = make(FakeOutbox(), connector)
    async with forwarding(fwd):
        await settle()
        assert clock.sleepers == 1
        assert label(fwd) == "refused:key_unavailable"
        assert fwd.stats().last_error == "key_unavailable"


async def test_reconnect_delays_follow_the_seeded_policy() -> None:
    outbox = FakeOutbox()
    failures = [UplinkUnavailable("down") for _ in range(6)]
    connector = FakeConnector(failures)
    fwd, clock = make(outbox, connector, reconnect_base_s=1.0, reconnect_cap_s=8.0)
    async with forwarding(fwd):
        for i in range(6):
            await settle()
            assert connector.calls == i + 1 and clock.sleepers == 1
            assert fwd.state is ForwarderState.BACKOFF
            assert fwd.stats().last_error == "unreachable"
            clock.step(8.0)
        await connected(connector)
    policy = BackoffPolicy(base=1.0, cap=8.0)
    rng = random.Random(7)
    expected = [policy.delay(i, rng) for i in range(6)]
    backoffs = clock.requested[: len(expected)]
    assert backoffs == pytest.approx(expected)
    assert [round(policy.ceiling(i)) for i in range(6)] == [1, 2, 4, 8, 8, 8]
    assert all(policy.ceiling(i) / 2 <= d <= policy.ceiling(i) for i, d in enumerate(backoffs))


async def test_success_resets_the_backoff() -> None:
    outbox = FakeOutbox()
    connector = FakeConnector([UplinkUnavailable("down"), UplinkUnavailable("down")])
    fwd, clock = make(outbox, connector, reconnect_base_s=1.0, reconnect_cap_s=60.0)
    async with forwarding(fwd):
        for calls in (1, 2):
            await settle()
            assert connector.calls == calls and clock.sleepers == 1
            clock.step(60)
        await connected(connector)
        link = connector.link
        link.ack_status()
        await settle()
        assert fwd.stats().sessions == 1
        link.drop()
        await settle()
        assert len(clock.requested) >= 3 and fwd.state is ForwarderState.BACKOFF
    assert clock.requested[0] <= 1.0
    assert 1.0 <= clock.requested[1] <= 2.0
    # after the accepted status message the next delay starts from the base again
    backoff_after = [d for d in clock.requested[2:] if d not in (60.0, 30.0)]
    assert backoff_after and backoff_after[0] <= 1.0


async def test_wake_sends_a_new_reading_at_once() -> None:
    outbox = FakeOutbox()
    connector = FakeConnector()
    fwd, _ = make(outbox, connector)
    async with forwarding(fwd):
        await connected(connector)
        await settle()
        link = connector.link
        assert link.obs() == []
        rid = outbox.add("p", 1)
        fwd.wake()
        await settle()
        assert link.obs()[0].ids == rid


async def test_bundles_stay_under_the_byte_limit() -> None:
    outbox = FakeOutbox()
    ids = outbox.add("p", 40, payload_size=900)

    def fat(rows: Sequence[PendingLike]) -> bytes:
        # ~2 KiB per reading
        return json.dumps({"ids": [r.id for r in rows], "pad": "y" * (2048 * len(rows))}).encode()

    connector = FakeConnector()
    fwd, _ = make(outbox, connector, encoder=fat, batch_max_readings=50, batch_max_bytes=8192,
                  inflight_window=50)
    async with forwarding(fwd):
        await connected(connector)
        await settle()
        msgs = connector.link.obs()
        assert all(len(m.payload) <= 8192 for m in msgs)
        assert [i for m in msgs for i in m.ids] == ids


async def test_status_document_is_retained_and_phi_free() -> None:
    outbox = FakeOutbox()
    outbox.add("patient-secret", 2)

    async def devices() -> dict[str, Any]:
        return {"hr-1": "connected"}

    connector = FakeConnector()
    fwd = Forwarder(
        make_cfg(), "hub-1", outbox, connector=connector, clock=RecordingClock(),
        consent=AllowAll(), encoder=ids_encoder, status_provider=devices,
    )
    async with forwarding(fwd):
        await connected(connector)
        status = [s for s in connector.link.sent if s.topic == "edge/v1/hub-1/status"]
        assert status and status[0].retain
        doc = json.loads(status[0].payload)
        assert doc["state"] == "online"
        assert doc["queue_depth"] == 2
        assert doc["devices"] == {"hr-1": "connected"}
        assert "cert_days_left" not in doc  # no certificate date was given
        assert "patient-secret" not in status[0].payload.decode()
    will = connector.wills[0]
    assert will is not None and will.retain and will.topic == "edge/v1/hub-1/status"
    assert json.loads(will.payload)["state"] == "offline"


async def test_status_document_counts_the_certificate_days() -> None:
    clock = RecordingClock()
    fwd = Forwarder(
        make_cfg(), "hub-1", FakeOutbox(), connector=FakeConnector(), clock=clock,
        consent=AllowAll(), cert_not_after=clock.now().replace(year=clock.now().year + 1),
    )
    doc = await fwd.status_document()
    assert doc["cert_days_left"] == 365.0


async def test_cancel_says_offline_and_disconnects_cleanly() -> None:
    outbox = FakeOutbox()
    connector = FakeConnector()
    fwd, _ = make(outbox, connector)
    task = asyncio.create_task(fwd.run())
    await connected(connector)
    link = connector.link
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert json.loads(link.sent[1].payload)["state"] == "offline"
    assert link.sent[1].retain
    assert link.closed_cleanly


async def test_status_is_republished_every_interval() -> None:
    outbox = FakeOutbox()
    connector = FakeConnector()
    fwd, clock = make(outbox, connector, status_interval_s=60)
    async with forwarding(fwd):
        await connected(connector)
        await settle()
        link = connector.link
        assert 60 in clock.requested
        outbox.add("p", 3)
        await clock.advance(60)
        docs = [json.loads(s.payload) for s in link.sent if s.retain]
        assert [d["queue_depth"] for d in docs] == [0, 3]


async def test_a_row_that_does_not_encode_stays_pending_and_the_rest_goes() -> None:
    outbox = FakeOutbox()
    good = outbox.add("p", 2)
    bad = outbox.add("p", 1)
    more = outbox.add("p", 1)

    def picky(rows: Sequence[PendingLike]) -> bytes:
        if any(r.id in bad for r in rows):
            raise ValueError("corrupt")
        return ids_encoder(rows)

    connector = FakeConnector()
    fwd, _ = make(outbox, connector, encoder=picky, batch_max_readings=10)
    async with forwarding(fwd):
        await connected(connector)
        await settle()
        link = connector.link
        assert [m.ids for m in link.obs()] == [[good[0]], [good[1]], more]
        link.ack(*link.obs())
        await eventually(lambda: outbox.pending_ids() == set(bad), what="the rest marked")
        assert fwd.stats().unencodable == 1
        assert fwd.state is ForwarderState.CONNECTED


# --- consent and draining (what the daemon's link and outbox proxies used to do) ------------


async def test_rows_read_without_consent_are_dropped_and_counted() -> None:
    outbox = FakeOutbox()
    kept = outbox.add("patient-a", 2)
    outbox.add("patient-b", 3)
    consent = Revocable()
    consent.revoked.add("patient-b")
    connector = FakeConnector()
    fwd, _ = make(outbox, connector, consent=consent, batch_max_readings=10)
    async with forwarding(fwd):
        await connected(connector)
        await settle()
        link = connector.link
        assert [m.ids for m in link.obs()] == [kept]
        assert fwd.stats().consent_dropped == 3


async def test_a_bundle_read_before_a_revoke_is_not_sent_and_counts_as_done() -> None:
    outbox = FakeOutbox()
    first = outbox.add("patient-b", 1)
    read_ahead = outbox.add("patient-b", 3)
    consent = Revocable()
    connector = FakeConnector()
    fwd, _ = make(outbox, connector, consent=consent, inflight_window=1, batch_max_readings=1)
    async with forwarding(fwd):
        await connected(connector)
        await settle()
        link = connector.link
        assert [m.ids for m in link.obs()] == [first]
        # The rest was read ahead; now the patient revokes (the vault purges them).
        consent.revoked.add("patient-b")
        link.ack(link.obs()[0])
        await settle()
        assert [m.ids for m in link.obs()] == [first]  # nothing more on the wire
        stats = fwd.stats()
        assert stats.revoked_not_sent == 3
        # As before the refactor: handed over and treated as done, so never retried.
        assert stats.readings_sent == 4 and stats.messages_acked == 4
        assert outbox.delivered == first + read_ahead
        assert stats.in_flight == 0


async def test_begin_drain_sends_nothing_new_but_settles_what_is_in_flight() -> None:
    outbox = FakeOutbox()
    outbox.add("p", 3)
    connector = FakeConnector()
    fwd, _ = make(outbox, connector, inflight_window=1, batch_max_readings=1)
    async with forwarding(fwd):
        await connected(connector)
        await settle()
        link = connector.link
        (in_flight,) = link.obs()
        reads = len(outbox.batch_calls)
        fwd.begin_drain()
        outbox.add("p", 2)
        fwd.wake()
        link.ack(in_flight)
        await settle()
        assert link.obs() == [in_flight]
        await eventually(lambda: outbox.delivered == in_flight.ids, what="in flight marked")
        assert len(outbox.pending_ids()) == 4  # stays pending for the next start
        assert len(outbox.batch_calls) == reads  # nothing new was read
        assert fwd.stats().in_flight == 0


def test_stats_as_dict_keeps_the_status_keys() -> None:
    fwd, _ = make(FakeOutbox(), FakeConnector())
    stats = fwd.stats()
    assert stats.state is ForwarderState.CONNECTING
    assert stats.as_dict() == {
        "state": "connecting", "in_flight": 0, "sessions": 0, "messages_sent": 0,
        "messages_acked": 0, "readings_sent": 0, "readings_delivered": 0, "ack_timeouts": 0,
        "publish_refusals": 0, "unroutable": 0, "unencodable": 0, "last_error": None,
    }


class CallLog(FakeOutbox):
    """A FakeOutbox that records the order of its reads and delivery marks."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, list[str]]] = []

    async def next_batch(self, limit: int, *, after_seq: int = 0) -> list[Any]:
        self.calls.append(("read", []))
        return await super().next_batch(limit, after_seq=after_seq)

    async def mark_delivered(self, ids: Sequence[str]) -> int:
        self.calls.append(("mark", list(ids)))
        return await super().mark_delivered(ids)


async def test_acks_are_marked_together_with_the_next_read() -> None:
    outbox = CallLog()
    outbox.add("p", 2)
    connector = FakeConnector()
    fwd, _ = make(outbox, connector, inflight_window=5, batch_max_readings=1,
                  ack_flush_delay_s=3600.0)
    async with forwarding(fwd):
        await connected(connector)
        await settle()
        link = connector.link
        m1, m2 = link.obs()
        link.ack(m1)
        await settle()
        link.ack(m2)
        await settle()
        assert outbox.delivered == []  # acknowledged, not yet marked: still pending
        outbox.calls.clear()
        late = outbox.add("p", 1)
        fwd.wake()
        await eventually(lambda: len(link.obs()) == 3, what="the new reading sent")
        # One mark for both PUBACKs, queued just before the read (one handoff to the vault).
        assert outbox.calls[:2] == [("mark", m1.ids + m2.ids), ("read", [])]
        assert sorted(outbox.delivered) == sorted(m1.ids + m2.ids)
        assert outbox.pending_ids() == set(late)


async def test_acks_are_marked_without_a_next_read_too() -> None:
    outbox = CallLog()
    outbox.add("p", 3)
    connector = FakeConnector()
    fwd, _ = make(outbox, connector, inflight_window=5, batch_max_readings=1)
    async with forwarding(fwd):
        await connected(connector)
        await settle()
        link = connector.link
        link.ack(*link.obs())
        await eventually(lambda: not outbox.rows, what="every reading marked delivered")
        assert fwd.stats().readings_delivered == 3


async def test_acks_not_yet_marked_are_marked_before_the_next_connection_reads() -> None:
    outbox = CallLog()
    ids = outbox.add("p", 2)
    connector = FakeConnector()
    fwd, clock = make(outbox, connector, inflight_window=5, batch_max_readings=1,
                      ack_flush_delay_s=3600.0)
    async with forwarding(fwd):
        await connected(connector)
        await settle()
        first = connector.link
        m1, _ = first.obs()
        first.ack(m1)
        await settle()
        first.drop()
        await settle()
        assert outbox.delivered == m1.ids
        clock.step(60)
        await connected(connector, 2)
        # The next connection re-sends only what was not acknowledged.
        assert [i for m in connector.links[1].obs() for i in m.ids] == ids[1:]
