"""The uplink against a real mosquitto (free 127.0.0.1 port, throwaway PKI): happy path with
FHIR validation, a broker restart, the ACL, and a connection reset / a PUBACK that never
comes (through a TCP proxy)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.observation import Observation

from devtools.broker import ingest_identity
from edge.config import UplinkConfig
from edge.testing import eventually
from edge.testing.uplink import forwarding
from edge.uplink.fhir_encoding import FHIR_CONTENT_TYPE
from edge.uplink.forwarder import Forwarder
from edge.uplink.mqtt import TlsMqttConnector
from edge.uplink.ports import PublishRefused
from edge.uplink.stats import ForwarderState
from tests.clinic.support import issue_client
from tests.support.mosquitto import (
    Broker,
    Received,
    Subscriber,
    TcpProxy,
    ids_in,
    start_broker,
    subscriber,
)
from tests.support.pki import TestPki, make_pki
from tests.support.uplink_fakes import (
    FakeOutbox,
    RecordingConnector,
    make_readings,
    real_forwarder,
)

pytestmark = pytest.mark.integration

PATIENTS = ("patient-a", "patient-b", "patient-c")


@pytest.fixture(scope="module")
def tpki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_pki(
        tmp_path_factory.mktemp("uplink"),
        "hub-1",
        {"clinician-1": ["patient-a"], "clinician-2": ["patient-b"]},
    )


@pytest.fixture
def broker(tmp_path: Path, tpki: TestPki) -> Iterator[Broker]:
    b = start_broker(tmp_path, tpki)
    try:
        yield b
    finally:
        b.stop()



def make_forwarder(
    cfg: UplinkConfig, outbox: FakeOutbox, tpki: TestPki
) -> tuple[Forwarder, RecordingConnector]:
    rec = RecordingConnector(TlsMqttConnector(cfg, tpki.hub_id))
    return real_forwarder(cfg, tpki.hub_id, outbox, connector=rec), rec


def validate_bundle(payload: bytes) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(payload, parse_float=Decimal)
    Bundle.model_validate(doc)
    assert doc["type"] == "transaction"
    for e in doc["entry"]:
        if e["resource"]["resourceType"] == "Observation":
            Observation.model_validate(e["resource"])
    return doc


async def test_happy_path_every_reading_arrives_in_a_valid_bundle(
    broker: Broker, tpki: TestPki
) -> None:
    outbox = FakeOutbox()
    readings = make_readings(230, PATIENTS)
    expected = set(outbox.add_readings(readings))
    cfg = tpki.uplink_config(broker.port, batch_max_readings=20, inflight_window=4)
    fwd, rec = make_forwarder(cfg, outbox, tpki)
    with subscriber(broker, tpki, topic="edge/v1/#") as sub:
        async with forwarding(fwd):
            await eventually(lambda: not outbox.rows, within_s=20.0)
            await asyncio.to_thread(sub.wait_for, lambda m: len(ids_in(m)) >= len(expected))
            # A reading appended now goes out at once.
            late = make_readings(1, PATIENTS, start=1000)
            outbox.add_readings(late)
            fwd.wake()
            await eventually(lambda: not outbox.rows, within_s=20.0)
            assert fwd.state is ForwarderState.CONNECTED

        def offline_last(m: list[Received]) -> bool:
            status = [x for x in m if x.topic == "edge/v1/hub-1/status"]
            return bool(status) and json.loads(status[-1].payload)["state"] == "offline"

        # The clean shutdown's retained "offline" is published as the forwarder stops; wait
        # (bounded) for it to reach the subscriber before looking.
        assert await asyncio.to_thread(sub.wait_for, offline_last), sub.snapshot()[-3:]
        msgs = sub.snapshot()
    obs = [m for m in msgs if "/obs/" in m.topic]
    got = ids_in(obs)
    assert set(got) == expected | {late[0].id}
    assert len(got) == len(set(got))  # no duplicates on a healthy link
    assert outbox.delivered and set(outbox.delivered) == set(got)
    by_patient = {r.id: r.patient for r in [*readings, *late]}
    for m in obs:
        assert m.content_type == FHIR_CONTENT_TYPE
        assert m.message_expiry and m.message_expiry > 0
        doc = validate_bundle(m.payload)
        ids = ids_in([m])
        assert 1 <= len(ids) <= 20
        patient = m.topic.rsplit("/", 1)[1]
        assert {by_patient[i] for i in ids} == {patient}  # one patient per message
        subjects = {
            e["resource"]["subject"]["reference"]
            for e in doc["entry"]
            if e["resource"]["resourceType"] == "Observation"
        }
        assert subjects == {f"Patient/{patient}"}
    status = [m for m in msgs if m.topic == "edge/v1/hub-1/status"]
    assert status and json.loads(status[0].payload)["state"] == "online"
    # The clean shutdown left a retained "offline" behind.
    assert json.loads(status[-1].payload)["state"] == "offline"
    assert all(p.acked for p in rec.log)


async def test_broker_restart_loses_nothing_and_only_resends_unacknowledged(
    tmp_path: Path, tpki: TestPki
) -> None:
    # Broker persistence + a persistent subscriber session: what the broker acknowledged
    # before it stopped is still owed to the subscriber after the restart.
    broker = start_broker(tmp_path, tpki, persistent=True)
    outbox = FakeOutbox()
    first = outbox.add_readings(make_readings(400, PATIENTS))
    cfg = tpki.uplink_config(broker.port, batch_max_readings=5, inflight_window=8)
    fwd, rec = make_forwarder(cfg, outbox, tpki)
    with broker, subscriber(broker, tpki, topic="edge/v1/+/obs/#", persistent_session=True) as sub:
        async with forwarding(fwd):
            # Stop the broker in the middle of the drain.
            await eventually(lambda: len(outbox.delivered) >= 50, within_s=20.0)
            rec.gate = asyncio.Event()
            sub.reset_subscribed()
            broker.stop()
            await eventually(lambda: fwd.state is not ForwarderState.CONNECTED, within_s=20.0)
            assert outbox.rows  # the rest is still pending
            second = outbox.add_readings(make_readings(100, PATIENTS, start=400))
            fwd.wake()
            broker.start()
            await asyncio.to_thread(sub.wait_subscribed, 15.0)
            rec.gate.set()  # the forwarder may reconnect once the subscriber is back
            await eventually(lambda: not outbox.rows, within_s=30)
            await asyncio.to_thread(
                sub.wait_for, lambda m: set(ids_in(m)) >= set(first) | set(second), 15.0
            )
        msgs = sub.snapshot()
    got = Counter(ids_in(msgs))
    assert set(got) == set(first) | set(second)  # nothing lost
    # Duplicates from the hub (not the broker re-delivering to the subscriber):
    fresh = Counter(ids_in(msgs, skip_redelivered=True))
    dupes = {i for i, n in fresh.items() if n > 1}
    # A reading arrives twice only if a message carrying it went unacknowledged.
    assert dupes <= rec.unacked_ids()
    # Nothing acknowledged was ever sent again.
    sends = Counter(i for p in rec.log for i in p.ids)
    for p in rec.log:
        if p.acked:
            assert all(sends[i] == 1 or i in rec.unacked_ids() for i in p.ids)
    assert set(outbox.delivered) <= rec.acked_ids()
    assert len(rec.links) >= 2


async def test_acl_hub_cannot_publish_under_another_hub(broker: Broker, tpki: TestPki) -> None:
    cfg = tpki.uplink_config(broker.port)
    with subscriber(broker, tpki, topic="edge/v1/#") as sub:
        link = await TlsMqttConnector(cfg, tpki.hub_id)(None)
        try:
            with pytest.raises(PublishRefused) as exc:
                await asyncio.wait_for(link.publish("edge/v1/hub-2/obs/patient-a", b"{}"), 10)
            assert exc.value.reason_code == 0x87
            # Positive control on the same connection: messages are delivered in order, so
            # once this one arrives the refused one would have arrived before it.
            await asyncio.wait_for(link.publish("edge/v1/hub-1/obs/patient-a", b"{}"), 10)
            assert await asyncio.to_thread(
                sub.wait_for, lambda m: any(x.topic == "edge/v1/hub-1/obs/patient-a" for x in m)
            )
        finally:
            await link.close()
        assert not any("hub-2" in m.topic for m in sub.snapshot())


async def test_acl_a_clinician_receives_nothing_the_clinic_receives_every_hubs_observations(
    tmp_path: Path, tpki: TestPki
) -> None:
    """The uplink through the shipped ACL (no observer): the clinic's ingest identity is the
    reader of every hub's observations; a clinician subscribed to everything is sent nothing
    (clinicians use the clinic's web application). The rest of the ACL is
    tests/integration/test_broker_acl.py."""
    ingest = issue_client(tpki.dir, tpki.ca, ingest_identity("clinic-1", "1"))
    hub2 = issue_client(tpki.dir, tpki.ca, "hub-2")
    broker = start_broker(tmp_path, tpki, hubs=["hub-1", "hub-2"],
                          clinic_ids=[ingest_identity("clinic-1", "1")], observers=())
    clinic = Subscriber(broker=broker, identity=ingest, ca=tpki.ca.cert,
                        topic="$share/clinic/edge/v1/+/obs/+", client_id="clinic-1-ingest-1")
    sent = [("hub-1", p) for p in PATIENTS] + [("hub-2", "patient-a")]
    with (
        broker,
        subscriber(broker, tpki, identity="clinician-1", topic="edge/v1/#") as clin,
        clinic,
    ):
        for hub, cfg in (("hub-1", tpki.uplink_config(broker.port)),
                         ("hub-2", tpki.uplink_config(broker.port, client_cert=hub2.cert,
                                                      client_key=hub2.key))):
            link = await TlsMqttConnector(cfg, hub)(None)
            try:
                for h, patient in sent:
                    if h == hub:
                        await asyncio.wait_for(
                            link.publish(f"edge/v1/{hub}/obs/{patient}", patient.encode()), 10)
            finally:
                await link.close()
        want = {f"edge/v1/{h}/obs/{p}" for h, p in sent}
        assert await asyncio.to_thread(clinic.wait_for, lambda m: {x.topic for x in m} >= want)
        # The broker logs each delivery as it routes the message: the clinic's are in the log,
        # so a delivery to the clinician would be too.
        log = broker.log_text()
        assert "Sending PUBLISH to clinic-1-ingest-1 (" in log
        assert "Sending PUBLISH to clinician-1 (" not in log
        assert clin.snapshot() == []


async def _drain_through_proxy(
    broker: Broker, tpki: TestPki, fault: str, **cfg_kw: Any
) -> tuple[FakeOutbox, RecordingConnector, list[str], Counter[str]]:
    proxy = await TcpProxy(broker.host, broker.port).start()
    outbox = FakeOutbox()
    ids = outbox.add_readings(make_readings(600, PATIENTS))
    cfg = tpki.uplink_config(proxy.port, batch_max_readings=5, inflight_window=6, **cfg_kw)
    fwd, rec = make_forwarder(cfg, outbox, tpki)
    try:
        with subscriber(broker, tpki, topic="edge/v1/+/obs/#") as sub:
            async with forwarding(fwd):
                await eventually(lambda: len(outbox.delivered) >= 100, within_s=20.0)
                if fault == "reset":
                    # Reset while messages are in flight. A PUBACK already inside the client
                    # can still land first, so repeat (bounded) until a reset has caught an
                    # unanswered message: that is what the test is about.
                    for _ in range(10):
                        proxy.blackhole(True)
                        await eventually(lambda: fwd.stats().in_flight > 0, within_s=20.0)
                        sessions = fwd.stats().sessions
                        proxy.cut()
                        proxy.blackhole(False)

                        def reconnected(before: int = sessions) -> bool:
                            return fwd.stats().sessions > before

                        await eventually(reconnected, within_s=20.0)
                        if any(p.acked is False for p in rec.log):
                            break
                else:
                    proxy.blackhole(True)
                    # PUBACKs stop; the forwarder notices by its ack timeout.
                    await eventually(lambda: fwd.stats().ack_timeouts >= 1, within_s=20.0)
                    proxy.blackhole(False)
                held = set(outbox.pending_ids())
                assert held and not held & set(outbox.delivered)
                await eventually(lambda: not outbox.rows, within_s=30)
                await asyncio.to_thread(sub.wait_for, lambda m: set(ids_in(m)) >= set(ids), 15.0)
            got = Counter(ids_in(sub.snapshot()))
    finally:
        await proxy.close()
    assert proxy.connections >= 2
    return outbox, rec, ids, got


@pytest.mark.parametrize("fault", ["reset", "blackhole"])
async def test_reset_or_missing_puback_keeps_the_outbox_consistent(
    broker: Broker, tpki: TestPki, fault: str
) -> None:
    outbox, rec, ids, got = await _drain_through_proxy(broker, tpki, fault, ack_timeout_s=1.0)
    assert set(got) == set(ids)
    # Marked delivered only after a success PUBACK of a message carrying it.
    assert set(outbox.delivered) <= rec.acked_ids()
    # Something was in flight when the fault hit, and it was re-sent afterwards.
    lost = [p for p in rec.log if p.acked is False]
    assert lost
    for p in lost:
        assert all(got[i] >= 1 for i in p.ids)
    dupes = {i for i, n in got.items() if n > 1}
    assert dupes <= rec.unacked_ids()


async def test_mqtt_311_is_selectable(broker: Broker, tpki: TestPki) -> None:
    outbox = FakeOutbox()
    expected = set(outbox.add_readings(make_readings(30, PATIENTS)))
    cfg = tpki.uplink_config(broker.port, mqtt_version="3.1.1", batch_max_readings=7)
    fwd, rec = make_forwarder(cfg, outbox, tpki)
    with subscriber(broker, tpki, topic="edge/v1/+/obs/#") as sub:
        async with forwarding(fwd):
            await eventually(lambda: not outbox.rows, within_s=20.0)
            assert rec.links[0].info.mqtt_version == "3.1.1"
            await asyncio.to_thread(sub.wait_for, lambda m: set(ids_in(m)) >= expected)
        msgs = sub.snapshot()
    assert set(ids_in(msgs)) == expected
    # 3.1.1 has no properties: no content type on the wire
    assert all(m.content_type is None for m in msgs)
    assert "as hub-1 (p2," in broker.log_text()  # mosquitto: p2 = MQTT 3.1.1, p5 = MQTT 5


async def test_last_will_says_offline_when_the_link_dies(broker: Broker, tpki: TestPki) -> None:
    cfg = tpki.uplink_config(broker.port, reconnect_base_s=30, reconnect_cap_s=30)
    fwd, rec = make_forwarder(cfg, FakeOutbox(), tpki)
    with subscriber(broker, tpki, topic="edge/v1/hub-1/status") as sub:
        async with forwarding(fwd):
            await asyncio.to_thread(
                sub.wait_for, lambda m: any(json.loads(x.payload)["state"] == "online" for x in m)
            )
            rec.links[0].abort()  # the connection drops without DISCONNECT, as in a crash
            assert await asyncio.to_thread(
                sub.wait_for, lambda m: json.loads(m[-1].payload)["state"] == "offline"
            )
            # The broker sends the will as soon as the socket closes, which can be before the
            # forwarder's loop has read the EOF: wait (bounded) for it to notice.
            await eventually(lambda: fwd.state is ForwarderState.BACKOFF, within_s=10)
        docs = [json.loads(m.payload) for m in sub.snapshot()]
    offline = docs[1]
    assert offline == {"hub": "hub-1", "state": "offline"}
    online = docs[0]
    assert {"queue_depth", "oldest_pending_age_s", "cert_days_left", "at"} <= set(online)
    assert 800 < online["cert_days_left"] < 830
