"""The broker's rules (issue 14, broker side; issue 12's "the clinic is the only reader")
against a real mosquitto started with the shipped configuration
(``config/mosquitto/mosquitto.conf.template``) and the shipped ACL rendering
(:func:`devtools.broker.render_acl`) — with no observer identity, i.e. exactly what a
production ACL grants.

Every test here is one finding of the attack and fails on the configuration before the fix
(``pattern write edge/v1/%u/#``, clinicians reading ``edge/v1/+/obs/<patient>``, no size limit,
client ids not tied to certificates, a world-readable ACL file).

Absence ("nobody received it") is never shown by waiting: the broker either refused the
PUBLISH (PUBACK ``0x87`` / ``0x95`` — it routed nothing), or a later message that the same
subscriber does receive proves that everything before it was delivered already, or the broker's
debug log (written in order by its single thread) has no ``Sending PUBLISH to <id>`` line before
a later delivery that was seen.
"""

from __future__ import annotations

import asyncio
import ssl
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from devtools.broker import (
    Broker,
    ingest_identity,
    render_acl,
    start_dev_broker,
    write_private,
)
from edge.testing import eventually
from edge.uplink.envelope import seal
from edge.uplink.mqtt import connect_link
from edge.uplink.pins import PinVerifier
from edge.uplink.pki import CertFiles, Issued, issue, write_identity
from edge.uplink.ports import Will
from edge.uplink.tls import build_context
from edge.uplink.topics import offline_document, status_topic
from tests.support.mosquitto import start_broker
from tests.support.pki import TestPki, make_pki

pytestmark = pytest.mark.integration

PREFIX = "edge/v1"
CLINIC_ID = "clinic-1"
W1 = ingest_identity(CLINIC_ID, "1")
W2 = ingest_identity(CLINIC_ID, "2")
#: what `clinic ingest` subscribes to (clinic/ingest/worker.py:topics)
CLINIC_TOPICS = [f"$share/clinic/{PREFIX}/+/obs/+", f"{PREFIX}/+/status"]
#: the shipped limits (config/mosquitto/mosquitto.conf.template)
MESSAGE_SIZE_LIMIT = 524_288
MAX_PACKET_SIZE = 532_480
#: uplink.batch_max_bytes: the largest Bundle a hub sends
BUNDLE_MAX = 262_144

#: PUBACK success, and "no matching subscribers" (also a success: the message was taken)
ACCEPTED = (0x00, 0x10)
NOT_AUTHORISED = 0x87
PACKET_TOO_LARGE = 0x95
WAIT_S = 15.0


# --- identities -----------------------------------------------------------------------------


@dataclass
class Pki:
    base: TestPki
    ids: dict[str, CertFiles]

    def __getitem__(self, cn: str) -> CertFiles:
        if cn == self.base.hub_id:
            return self.base.hub
        if cn == self.base.admin_name:
            return self.base.admin
        if cn in self.base.clinicians:
            return self.base.clinician(cn)
        return self.ids[cn]


def _load_ca(pki: TestPki) -> Issued:
    cert = x509.load_pem_x509_certificate(pki.ca.cert.read_bytes())
    key = serialization.load_pem_private_key(pki.ca.key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return Issued(cert, key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = make_pki(
        tmp_path_factory.mktemp("broker-acl"),
        "hub-1",
        {"clinician-1": ["patient-a"], "clinician-2": ["patient-b"]},
        hostile=(),
    )
    ca = _load_ca(base)
    # hub-2: enrolled; hub-9: a valid certificate from the same CA, never enrolled;
    # one certificate per clinic ingest worker.
    ids = {cn: write_identity(base.dir, cn, issue(ca, cn)) for cn in ("hub-2", "hub-9", W1, W2)}
    return Pki(base, ids)


def _start(tmp_path: Path, pki: Pki, hubs: list[str]) -> Broker:
    # The shipped rendering: no observers.
    return start_broker(tmp_path, pki.base, hubs=hubs, clinic_ids=[W1, W2], observers=())


@pytest.fixture
def broker(tmp_path: Path, pki: Pki) -> Iterator[Broker]:
    b = _start(tmp_path, pki, ["hub-1", "hub-2"])
    try:
        yield b
    finally:
        b.stop()


# --- a plain MQTT 5 client with any certificate and any requested client id ------------------


@dataclass
class Got:
    topic: str
    payload: bytes
    retain: bool


@dataclass
class Peer:
    """paho in its own thread; every wait is bounded and event-driven."""

    broker: Broker
    ca: Path
    identity: CertFiles
    client_id: str
    clean_start: bool = True
    session_expiry_s: int = 0
    will: tuple[str, bytes, bool] | None = None
    messages: list[Got] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._cond = threading.Condition()
        self._acks: dict[int, int] = {}
        self._subacks: dict[int, list[int]] = {}
        self.connack: ReasonCode | None = None
        self.session_present: bool | None = None
        self.disconnect_reason: int | None = None
        self.closed = False
        self._c = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            reconnect_on_failure=False,
        )
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.load_cert_chain(str(self.identity.cert), str(self.identity.key))
        self._c.tls_set_context(ctx)
        if self.will is not None:
            topic, payload, retain = self.will
            self._c.will_set(topic, payload, qos=1, retain=retain)
        self._c.on_connect = self._on_connect
        self._c.on_disconnect = self._on_disconnect
        self._c.on_publish = self._on_publish
        self._c.on_subscribe = self._on_subscribe
        self._c.on_message = self._on_message

    # paho's callbacks (its thread); userdata, flags and properties are Any there
    def _on_connect(self, c: paho.Client, u: Any, flags: Any, rc: ReasonCode, p: Any) -> None:
        with self._cond:
            self.connack = rc
            self.session_present = bool(flags.session_present)
            self._cond.notify_all()

    def _on_disconnect(self, c: paho.Client, u: Any, f: Any, rc: ReasonCode, p: Any) -> None:
        with self._cond:
            self.disconnect_reason = int(rc.value)
            self.closed = True
            self._cond.notify_all()

    def _on_publish(self, c: paho.Client, u: Any, mid: int, rc: ReasonCode, p: Any) -> None:
        with self._cond:
            self._acks[mid] = int(rc.value)
            self._cond.notify_all()

    def _on_subscribe(self, c: paho.Client, u: Any, mid: int, rcs: Any, p: Any) -> None:
        with self._cond:
            self._subacks[mid] = [int(rc.value) for rc in rcs]
            self._cond.notify_all()

    def _on_message(self, c: paho.Client, u: Any, msg: paho.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Got(msg.topic, bytes(msg.payload), bool(msg.retain)))
            self._cond.notify_all()

    def _wait(self, pred: Any, what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(pred, WAIT_S):
                raise AssertionError(f"{self.identity.cert.stem}: no {what} within {WAIT_S} s")

    def connect(self) -> Peer:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.session_expiry_s
        self._c.connect(self.broker.host, self.broker.port, keepalive=30,
                        clean_start=self.clean_start, properties=props)
        self._c.loop_start()
        self._wait(lambda: self.connack is not None or self.closed, "CONNACK")
        assert self.connack is not None and not self.connack.is_failure, self.connack
        return self

    def subscribe(self, *topics: str, retain_handling: int = 0) -> list[int]:
        opts = SubscribeOptions(qos=1, retainHandling=retain_handling)
        rc, mid = self._c.subscribe([(t, opts) for t in topics])
        assert rc == paho.MQTT_ERR_SUCCESS and mid is not None
        self._wait(lambda: mid in self._subacks, "SUBACK")
        return self._subacks[mid]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int | None:
        """The PUBACK reason code; None when the broker closed the connection instead."""
        info = self._c.publish(topic, payload, qos=1, retain=retain)
        self._wait(lambda: info.mid in self._acks or self.closed, "PUBACK")
        return self._acks.get(info.mid)

    def wait_for(self, pred: Any, what: str) -> list[Got]:
        self._wait(lambda: pred(self.messages), what)
        with self._cond:
            return list(self.messages)

    def wait_closed(self) -> None:
        self._wait(lambda: self.closed, "disconnect")

    def snapshot(self) -> list[Got]:
        with self._cond:
            return list(self.messages)

    def close(self) -> None:
        if not self.closed:
            self._c.disconnect()
        self._c.loop_stop()


def peer(broker: Broker, pki: Pki, cn: str, client_id: str | None = None, **kw: Any) -> Peer:
    return Peer(broker, pki.base.ca.cert, pki[cn], client_id or cn, **kw)


def topics_of(msgs: list[Got]) -> list[str]:
    return [m.topic for m in msgs]


def sent_to(broker: Broker, client_id: str, text: str | None = None) -> list[str]:
    """The broker's own record of deliveries to ``client_id`` (debug log)."""
    log = broker.log_text() if text is None else text
    return [line for line in log.splitlines() if f"Sending PUBLISH to {client_id} (" in line]


@pytest.fixture
def peers() -> Iterator[list[Peer]]:
    opened: list[Peer] = []
    yield opened
    for p in opened:
        p.close()


def started(peers: list[Peer], p: Peer) -> Peer:
    peers.append(p)
    return p.connect()


# --- files --------------------------------------------------------------------------------------


def test_the_acl_and_config_files_are_private(broker: Broker) -> None:
    assert broker.acl_path is not None
    for path in (broker.acl_path, broker.conf_path):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == 0o600, f"{path.name} is {oct(mode)}"
    # rewriting it (an enrolment change) keeps it private, even over a looser file
    broker.acl_path.chmod(0o644)
    write_private(broker.acl_path, broker.acl_path.read_text())
    assert stat.S_IMODE(broker.acl_path.stat().st_mode) == 0o600


# --- who may write ------------------------------------------------------------------------------


def test_a_clinician_cannot_publish_forged_bundles_that_anyone_receives(
    broker: Broker, pki: Pki, peers: list[Peer]
) -> None:
    clinic = started(peers, peer(broker, pki, W1))
    assert clinic.subscribe(*CLINIC_TOPICS) == [1, 1]
    victim = started(peers, peer(broker, pki, "clinician-2"))
    victim.subscribe(f"{PREFIX}/#")
    forger = started(peers, peer(broker, pki, "clinician-1"))
    forged = b'{"resourceType":"Bundle","type":"transaction","entry":[]}'
    # Under its own CN (what `pattern write edge/v1/%u/#` allowed), under a real hub's id, a
    # retained "status", and outside the prefix: all refused by the broker, routed nowhere.
    for topic, retain in [
        (f"{PREFIX}/clinician-1/obs/patient-b", False),
        (f"{PREFIX}/clinician-1/status", True),
        (f"{PREFIX}/hub-1/obs/patient-b", False),
        (f"{PREFIX}/hub-1/status", True),
        ("elsewhere/patient-b", False),
    ]:
        assert forger.publish(topic, forged, retain=retain) == NOT_AUTHORISED, topic
    admin = started(peers, peer(broker, pki, "admin"))
    for admin_topic in (f"{PREFIX}/hub-1/obs/patient-b", f"{PREFIX}/hub-1/status"):
        assert admin.publish(admin_topic, forged) == NOT_AUTHORISED
    # The real hub's message is the first and only thing the clinic gets.
    hub = started(peers, peer(broker, pki, "hub-1"))
    assert hub.publish(f"{PREFIX}/hub-1/obs/patient-b", b"genuine") in ACCEPTED
    got = clinic.wait_for(lambda m: len(m) >= 1, "the hub's Bundle")
    assert [(m.topic, m.payload) for m in got] == [(f"{PREFIX}/hub-1/obs/patient-b", b"genuine")]
    assert victim.snapshot() == [] and sent_to(broker, "clinician-2") == []


def test_a_hub_writes_only_its_own_status_and_observations(
    broker: Broker, pki: Pki, peers: list[Peer]
) -> None:
    clinic = started(peers, peer(broker, pki, W1))
    clinic.subscribe(*CLINIC_TOPICS)
    hub = started(peers, peer(broker, pki, "hub-1"))
    for topic in [
        f"{PREFIX}/hub-2/obs/patient-a",  # another hub's id
        f"{PREFIX}/hub-2/status",
        f"{PREFIX}/hub-1/config",  # its own id, but not a topic a hub writes
        f"{PREFIX}/hub-1/obs/patient-a/extra",
        f"{PREFIX}/hub-1",
        "elsewhere/hub-1/status",
    ]:
        assert hub.publish(topic, b"x", retain=topic.endswith("status")) == NOT_AUTHORISED, topic
    # A certificate from the same CA that was never enrolled writes nothing, not even under
    # its own CN (the old `pattern` line let any certificate do that).
    stranger = started(peers, peer(broker, pki, "hub-9"))
    assert stranger.publish(f"{PREFIX}/hub-9/obs/patient-a", b"x") == NOT_AUTHORISED
    assert stranger.publish(f"{PREFIX}/hub-9/status", b"x", retain=True) == NOT_AUTHORISED
    assert hub.publish(f"{PREFIX}/hub-1/obs/patient-a", b"bundle") in ACCEPTED
    assert hub.publish(f"{PREFIX}/hub-1/status", b'{"state":"online"}', retain=True) in ACCEPTED
    got = clinic.wait_for(lambda m: len(m) >= 2, "the hub's two messages")
    assert topics_of(got) == [f"{PREFIX}/hub-1/obs/patient-a", f"{PREFIX}/hub-1/status"]


# --- who may read -------------------------------------------------------------------------------


def test_only_the_clinic_reads_observations_and_status(
    broker: Broker, pki: Pki, peers: list[Peer]
) -> None:
    clinic = started(peers, peer(broker, pki, W1))
    clinic.subscribe(*CLINIC_TOPICS)
    watchers = {
        "clinician-1": [f"{PREFIX}/+/obs/patient-a", f"{PREFIX}/#"],  # its own patient
        "admin": ["#"],
        "hub-2": [f"{PREFIX}/#"],  # hubs read nothing either
    }
    others = []
    for cn, topics in watchers.items():
        w = started(peers, peer(broker, pki, cn))
        # mosquitto 2.0 acknowledges any SUBSCRIBE (it checks read access per message)
        w.subscribe(*topics)
        others.append(w)
    hub = started(peers, peer(broker, pki, "hub-1"))
    assert hub.publish(f"{PREFIX}/hub-1/obs/patient-a", b"a") in ACCEPTED
    assert hub.publish(f"{PREFIX}/hub-1/status", b'{"state":"online"}', retain=True) in ACCEPTED
    got = clinic.wait_for(lambda m: len(m) >= 2, "observation and status")
    assert topics_of(got) == [f"{PREFIX}/hub-1/obs/patient-a", f"{PREFIX}/hub-1/status"]
    log = broker.log_text()  # both deliveries to the clinic are in it: so is anything earlier
    for w in others:
        assert w.snapshot() == [] and sent_to(broker, w.client_id, log) == [], w.client_id
    # A late subscriber is no different: the retained status is withheld too.
    late = started(peers, peer(broker, pki, "clinician-2"))
    late.subscribe(f"{PREFIX}/+/status")
    second = started(peers, peer(broker, pki, W2))
    second.subscribe(f"{PREFIX}/+/status")
    second.wait_for(lambda m: len(m) >= 1, "the retained status")
    assert late.snapshot() == [] and sent_to(broker, "clinician-2") == []


def test_a_retained_observation_lands_only_on_the_hubs_own_topic_and_only_the_clinic_sees_it(
    broker: Broker, pki: Pki, peers: list[Peer]
) -> None:
    """mosquitto 2.0 cannot refuse the retain flag per topic (its ACL has no such rule, and
    ``retain_available false`` would also kill the retained status). What holds: a hub can
    retain only on its own status and obs topics, and only the clinic can read those. The
    clinic must subscribe to observations with retain handling 2 ("never send retained"):
    mosquitto 2.0 does send retained messages to a shared subscription otherwise."""
    hub = started(peers, peer(broker, pki, "hub-1"))
    assert hub.publish(f"{PREFIX}/hub-2/obs/patient-a", b"x", retain=True) == NOT_AUTHORISED
    assert hub.publish(f"{PREFIX}/hub-1/obs/patient-a", b"stale", retain=True) in ACCEPTED
    clinician = started(peers, peer(broker, pki, "clinician-1"))
    clinician.subscribe(f"{PREFIX}/hub-1/obs/patient-a")
    clinic = started(peers, peer(broker, pki, W1))
    clinic.subscribe(CLINIC_TOPICS[0], retain_handling=2)
    assert hub.publish(f"{PREFIX}/hub-1/obs/patient-a", b"fresh") in ACCEPTED
    got = clinic.wait_for(lambda m: any(x.payload == b"fresh" for x in m), "the live Bundle")
    assert [(m.payload, m.retain) for m in got] == [(b"fresh", False)]
    assert clinician.snapshot() == [] and sent_to(broker, "clinician-1") == []
    # The limit, stated: a clinic worker subscribing with default options is sent it.
    default = started(peers, peer(broker, pki, W2))
    default.subscribe(f"$share/other/{PREFIX}/+/obs/+")
    assert default.wait_for(lambda m: len(m) >= 1, "the retained Bundle")[0].retain


# --- size ------------------------------------------------------------------------------------


def _sealed_max_bundle(pki: Pki) -> bytes:
    """A maximal Bundle (batch_max_bytes) sealed as the hub seals it, with a three-certificate
    x5c chain (leaf + two more) for headroom."""
    head, tail = b'{"resourceType":"Bundle","type":"transaction","pad":"', b'"}'
    body = head + b"x" * (BUNDLE_MAX - len(head) - len(tail)) + tail
    assert len(body) == BUNDLE_MAX
    hub = x509.load_pem_x509_certificate(pki.base.hub.cert.read_bytes())
    key = serialization.load_pem_private_key(pki.base.hub.key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    ca = x509.load_pem_x509_certificate(pki.base.ca.cert.read_bytes())
    chain = [c.public_bytes(serialization.Encoding.DER) for c in (hub, ca, ca)]
    recipient = ec.generate_private_key(ec.SECP256R1()).public_key()
    return seal(body, signing_key=key, cert_chain_der=chain, recipient=recipient).encode()


def test_a_maximal_sealed_bundle_passes_the_size_limit(
    broker: Broker, pki: Pki, peers: list[Peer]
) -> None:
    sealed = _sealed_max_bundle(pki)
    assert len(sealed) < MESSAGE_SIZE_LIMIT
    clinic = started(peers, peer(broker, pki, W1))
    clinic.subscribe(*CLINIC_TOPICS)
    hub = started(peers, peer(broker, pki, "hub-1"))
    assert hub.publish(f"{PREFIX}/hub-1/obs/patient-a", sealed) in ACCEPTED
    got = clinic.wait_for(lambda m: len(m) >= 1, "the sealed Bundle")
    assert got[0].payload == sealed


def test_an_oversized_retained_status_reaches_no_one(
    broker: Broker, pki: Pki, peers: list[Peer]
) -> None:
    status = f"{PREFIX}/hub-1/status"
    clinic = started(peers, peer(broker, pki, W1))
    clinic.subscribe(*CLINIC_TOPICS)
    hub = started(peers, peer(broker, pki, "hub-1"))
    assert hub.publish(status, b'{"state":"online"}', retain=True) in ACCEPTED
    hub.close()
    # One byte over the payload limit (message_size_limit): dropped, answered with PUBACK 0x95
    # (which paho 2.x cannot parse on a PUBACK: it drops the connection instead).
    mark = len(broker.log_text())
    over = started(peers, peer(broker, pki, "hub-1"))
    assert over.publish(status, b"x" * (MESSAGE_SIZE_LIMIT + 1), retain=True) in (
        PACKET_TOO_LARGE, None)
    broker.wait_for_log("Dropped too large PUBLISH from hub-1", start=mark)
    over.close()
    # 2 MiB over (max_packet_size): not even read; the connection is closed.
    huge = b"x" * (MESSAGE_SIZE_LIMIT + 2 * 1024 * 1024)
    for cn in ("hub-1", "clinician-1"):  # the hub, and anyone else (size before the ACL)
        mark = len(broker.log_text())
        sender = started(peers, peer(broker, pki, cn))
        assert sender.publish(status, huge, retain=True) is None
        broker.wait_for_log(f"Client {cn} disconnected due to oversize packet.", start=mark)
    # What the clinic saw: the small status, then the marker, nothing in between.
    hub2 = started(peers, peer(broker, pki, "hub-1", "hub-1-again"))
    assert hub2.publish(status, b'{"state":"marker"}') in ACCEPTED
    got = clinic.wait_for(lambda m: any(b"marker" in x.payload for x in m), "the marker")
    assert [m.payload for m in got] == [b'{"state":"online"}', b'{"state":"marker"}']
    # And what a new subscriber gets as the retained status is still the small one.
    fresh = started(peers, peer(broker, pki, W2))
    fresh.subscribe(f"{PREFIX}/+/status")
    retained = fresh.wait_for(lambda m: len(m) >= 1, "the retained status")
    assert [(m.payload, m.retain) for m in retained] == [(b'{"state":"online"}', True)]


# --- client ids are the certificate's ------------------------------------------------------------


async def test_a_clinician_using_the_hubs_client_id_neither_kicks_it_off_nor_fires_its_will(
    broker: Broker, pki: Pki, peers: list[Peer]
) -> None:
    clinic = started(peers, peer(broker, pki, W1))
    await asyncio.to_thread(clinic.subscribe, f"{PREFIX}/+/status")
    # the hub exactly as the daemon connects: its client id, its Last Will
    cfg = pki.base.uplink_config(broker.port)
    topic = status_topic(PREFIX, "hub-1")
    link = await connect_link(
        cfg, "hub-1", build_context(cfg), PinVerifier.from_files(cfg.pins, cfg.ca_file),
        will=Will(topic, offline_document("hub-1")),
    )
    try:
        await asyncio.wait_for(link.publish(topic, b'{"state":"online"}', retain=True), WAIT_S)
        impostor = peer(broker, pki, "clinician-1", client_id="hub-1")
        await asyncio.to_thread(started, peers, impostor)
        # The hub's link is the same one, and it still works ...
        await asyncio.wait_for(link.publish(topic, b'{"state":"after"}'), WAIT_S)
        assert not link.is_closed
        got = await asyncio.to_thread(
            clinic.wait_for, lambda m: any(b"after" in x.payload for x in m), "the hub's status"
        )
    finally:
        await link.close()
    # ... and no "offline" Will came between its two status documents.
    assert [m.payload for m in got] == [b'{"state":"online"}', b'{"state":"after"}']
    log = broker.log_text()
    assert "as clinician-1 (" in log and "already connected, closing old connection" not in log


def test_another_identity_cannot_resume_the_clinics_session(
    broker: Broker, pki: Pki, peers: list[Peer]
) -> None:
    owner = started(peers, peer(broker, pki, W1, clean_start=False, session_expiry_s=600))
    owner.subscribe(CLINIC_TOPICS[0])
    mark = len(broker.log_text())
    owner.close()  # DISCONNECT: the session and its subscription stay with the broker
    broker.wait_for_log(f"Client {W1} disconnected.", start=mark)
    hub = started(peers, peer(broker, pki, "hub-1"))
    for i in range(5):
        assert hub.publish(f"{PREFIX}/hub-1/obs/patient-a", f"queued-{i}".encode()) in ACCEPTED
    # Identities that ask for the worker's client id and its session: a clinician, a hub, and
    # the clinic's other worker (which may read observations, but not take this session).
    for cn in ("clinician-1", "hub-2", W2):
        thief = started(peers, peer(broker, pki, cn, client_id=W1, clean_start=False,
                                     session_expiry_s=600))
        assert thief.session_present is False, cn
    # The owner resumes its session and gets every queued message: nobody drained it.
    back = started(peers, peer(broker, pki, W1, clean_start=False, session_expiry_s=600))
    assert back.session_present is True
    got = back.wait_for(lambda m: len(m) >= 5, "the queued messages")
    assert sorted(m.payload for m in got) == [f"queued-{i}".encode() for i in range(5)]
    log = broker.log_text()
    for cn in ("clinician-1", "hub-2", W2):
        assert sent_to(broker, cn, log) == [], cn


async def test_one_certificate_is_one_session_so_each_worker_has_its_own(
    broker: Broker, pki: Pki, peers: list[Peer]
) -> None:
    """Why every `clinic ingest` worker needs its own certificate: two connections with one
    certificate are one client id, and the second takes the first's place."""
    first = await asyncio.to_thread(started, peers, peer(broker, pki, W1, client_id=W1))
    second = await asyncio.to_thread(started, peers, peer(broker, pki, W1, client_id=W2))
    await asyncio.to_thread(first.wait_closed)  # mosquitto 2.0 just closes it (no 0x8E)
    assert f"Client {W1} already connected, closing old connection." in broker.log_text()
    assert not second.closed
    # With their own certificates, two workers share the stream and both stay connected.
    other = await asyncio.to_thread(started, peers, peer(broker, pki, W2))
    await asyncio.to_thread(other.subscribe, *CLINIC_TOPICS)
    await asyncio.to_thread(second.subscribe, *CLINIC_TOPICS)
    hub = await asyncio.to_thread(started, peers, peer(broker, pki, "hub-1"))
    sent = [f"m{i}".encode() for i in range(20)]
    for payload in sent:
        rc = await asyncio.to_thread(hub.publish, f"{PREFIX}/hub-1/obs/patient-a", payload)
        assert rc in ACCEPTED
    await eventually(lambda: len(other.snapshot()) + len(second.snapshot()) >= len(sent),
                     within_s=WAIT_S, what="the whole stream")
    split = (other.snapshot(), second.snapshot())
    assert sorted(m.payload for part in split for m in part) == sorted(sent)
    assert all(split) and not other.closed and not second.closed


# --- enrolment changes ---------------------------------------------------------------------------


def test_a_revoked_hub_writes_nothing_and_its_retained_status_is_withheld(
    broker: Broker, pki: Pki, peers: list[Peer]
) -> None:
    hub2 = started(peers, peer(broker, pki, "hub-2"))
    assert hub2.publish(f"{PREFIX}/hub-2/status", b'{"hub":"hub-2"}', retain=True) in ACCEPTED
    hub1 = started(peers, peer(broker, pki, "hub-1"))
    assert hub1.publish(f"{PREFIX}/hub-1/status", b'{"hub":"hub-1"}', retain=True) in ACCEPTED
    # hub-2 is revoked: the ACL is rendered again without it and mosquitto reloads it.
    assert broker.acl_path is not None
    write_private(
        broker.acl_path,
        render_acl(PREFIX, pki.base.clinicians, [pki.base.admin_name], hubs=["hub-1"],
                   clinic_ids=[W1, W2]),
    )
    broker.wait_for_log("Reloading config.", start=broker.reload())
    assert hub2.publish(f"{PREFIX}/hub-2/status", b'{"hub":"hub-2","again":1}') == NOT_AUTHORISED
    clinic = started(peers, peer(broker, pki, W1))
    clinic.subscribe(f"{PREFIX}/+/status")
    assert hub1.publish(f"{PREFIX}/hub-1/status", b'{"hub":"hub-1","marker":1}') in ACCEPTED
    got = clinic.wait_for(lambda m: any(b"marker" in x.payload for x in m), "the marker")
    assert [m.payload for m in got] == [b'{"hub":"hub-1"}', b'{"hub":"hub-1","marker":1}']


# --- the renderer ---------------------------------------------------------------------------------


def test_the_rendered_acl_has_no_patterns_and_one_role_per_identity() -> None:
    acl = render_acl(PREFIX, {"clinician-1": ["patient-a"]}, ["admin"], hubs=["hub-1"],
                     clinic_ids=[W1])
    blocks: dict[str, list[str]] = {}
    user = ""
    for line in acl.splitlines():
        if line.startswith("user "):
            user = line
            blocks[user] = []
        elif line and not line.startswith("#"):
            assert user, f"{line!r} outside a user block applies to every certificate"
            blocks[user].append(line)
    assert blocks == {
        "user hub-1": [f"topic write {PREFIX}/hub-1/status", f"topic write {PREFIX}/hub-1/obs/+"],
        f"user {W1}": [f"topic read {PREFIX}/+/obs/+", f"topic read {PREFIX}/+/status"],
        "user admin": ["topic read $SYS/#"],
        "user clinician-1": ["topic deny #"],
    }
    for bad in ({"hubs": ["hub-1"], "clinic_ids": ["hub-1"]},
                {"hubs": ["hub+1"]}, {"hubs": ["hub/1"]}, {"hubs": [""]}, {"hubs": ["a b"]},
                {"hubs": ["$SYS"]}):
        with pytest.raises(ValueError):
            render_acl(PREFIX, (), (), **bad)
    with pytest.raises(ValueError, match="hub-1"):
        render_acl(PREFIX, {"hub-1": []}, (), hubs=["hub-1"])
    with pytest.raises(ValueError):
        render_acl("edge/+", (), (), hubs=["hub-1"])


def test_the_dev_broker_needs_the_enrolled_hubs(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(ValueError, match="hubs"):
        start_dev_broker(tmp_path, cafile=pki.base.ca.cert, certfile=pki.base.broker.cert,
                         keyfile=pki.base.broker.key, clinicians=pki.base.clinicians)


def test_acl_example_is_what_the_renderer_writes() -> None:
    """config/mosquitto/acl.example stays the renderer's output (after its header)."""
    example = (Path(__file__).resolve().parents[2] / "config/mosquitto/acl.example").read_text()
    body = example[example.index("# rendered by devtools/broker.py"):]
    assert body == render_acl(
        PREFIX, {"clinician-1": ["patient-a"]}, ["admin"], hubs=["hub-1", "hub-2"],
        clinic_ids=[ingest_identity(CLINIC_ID, "1"), ingest_identity(CLINIC_ID, "2")],
    )
