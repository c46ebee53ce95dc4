"""[e2e] sign+encrypt on the hub: the forwarder publishes JWE(JWS(Bundle)) as application/jose,
and an independent JOSE library (jwcrypto) opens it with the clinic key, verifies it with the
hub certificate and finds the very bytes plain mode would have sent. Delivery is unchanged."""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwcrypto import jwe, jwk, jws

from edge.config import GatewayConfig, parse_config
from edge.errors import ConfigError, KeyUnavailable
from edge.testing import eventually, settle
from edge.testing.uplink import AllowAll, FakeConnector, FakeMqttLink, Sent, forwarding
from edge.uplink.envelope import CONTENT_TYPE
from edge.uplink.fhir_encoding import FHIR_CONTENT_TYPE
from edge.uplink.forwarder import Forwarder
from edge.uplink.pki import DevPki, issue, make_ca, write_dev_pki, write_identity, write_key
from edge.uplink.sealing import Encoding, describe, encoding_for, load_signer
from tests.support.uplink_fakes import FakeOutbox, RecordingClock, make_readings

HUB = "hub-1"
PATIENTS = ("patient-a", "patient-b")


class Keys:
    """A dev PKI on disk plus the clinic's E2E key pair (the public half as a PEM file)."""

    def __init__(self, tmp: Path) -> None:
        self.pki: DevPki = write_dev_pki(tmp / "pki", hub_id=HUB)
        self.clinic = ec.generate_private_key(ec.SECP256R1())
        self.recipient = tmp / "clinic-e2e.pem"
        self.recipient.write_bytes(self.clinic.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

    def config(self, mode: str = "sign+encrypt", *, compress: bool = False,
               **uplink: Any) -> GatewayConfig:
        e2e: dict[str, Any] = {"mode": mode}
        if mode == "sign+encrypt":
            e2e["recipient_key"] = str(self.recipient)
        if compress:
            e2e["compress"] = True
        return parse_config({
            "hub": {"id": HUB},
            "uplink": {"host": "127.0.0.1", "ca_file": str(self.pki.ca.cert),
                       "client_cert": str(self.pki.hub.cert),
                       "client_key": str(self.pki.hub.key), "pins": [self.pki.broker.pin],
                       "batch_max_readings": 4, "inflight_window": 50, **uplink},
            "e2e": e2e,
        })

    def clinic_jwk(self) -> jwk.JWK:
        return jwk.JWK.from_pem(self.clinic.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))

    def hub_cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.pki.hub.cert.read_bytes())


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path)


def open_with_jwcrypto(keys: Keys, payload: bytes) -> tuple[dict[str, Any], dict[str, Any],
                                                             bytes]:
    """(JWE header, JWS header, inner payload); raises if anything does not verify."""
    outer = jwe.JWE()
    outer.allowed_algs = ["ECDH-ES+A256KW", "A256GCM"]
    outer.deserialize(payload.decode("ascii"), key=keys.clinic_jwk())
    inner = jws.JWS()
    inner.allowed_algs = ["ES256"]
    inner.deserialize(outer.payload.decode("ascii"))
    x5c = inner.jose_header["x5c"]
    leaf = x509.load_der_x509_certificate(base64.b64decode(x5c[0]))
    inner.verify(jwk.JWK.from_pyca(leaf.public_key()))
    assert leaf == keys.hub_cert()
    return dict(outer.jose_header), dict(inner.jose_header), bytes(inner.payload)


def forwarder(keys: Keys, outbox: FakeOutbox, connector: FakeConnector,
              encoding: Encoding, clock: RecordingClock | None = None) -> Forwarder:
    return Forwarder(
        keys.config().uplink, HUB, outbox, connector=connector, clock=clock or RecordingClock(),
        consent=AllowAll(), rng=random.Random(7), encoder=encoding.encode,
        content_type=encoding.content_type,
    )


async def publish_all(keys: Keys, encoding: Encoding) -> tuple[list[Sent], FakeOutbox]:
    """Run a forwarder with ``encoding`` over the same ten readings; every Bundle it sent."""
    outbox = FakeOutbox()
    outbox.add_readings(make_readings(10, PATIENTS))
    connector = FakeConnector()
    fwd = forwarder(keys, outbox, connector, encoding)
    async with forwarding(fwd):
        await eventually(lambda: len(connector.links) == 1 and len(connector.link.obs()) >= 3,
                         what="bundles published")
        await settle()
        link: FakeMqttLink = connector.link
        msgs = link.obs()
        link.ack(*msgs)
        await eventually(lambda: not outbox.rows, what="every reading delivered")
    return msgs, outbox


async def test_sealed_payload_opens_with_jwcrypto_and_is_the_plain_bundle(keys: Keys) -> None:
    sealed = encoding_for(keys.config())
    plain = encoding_for(keys.config("off"))
    assert (sealed.content_type, plain.content_type) == (CONTENT_TYPE, FHIR_CONTENT_TYPE)
    sealed_msgs, sealed_box = await publish_all(keys, sealed)
    plain_msgs, plain_box = await publish_all(keys, plain)
    # same messages, same topics, same ids, same PUBACK rule
    assert [m.topic for m in sealed_msgs] == [m.topic for m in plain_msgs]
    assert sealed_box.delivered == plain_box.delivered and len(sealed_box.delivered) == 10
    assert all(m.content_type == "application/jose" for m in sealed_msgs)
    assert all(m.content_type == "application/fhir+json" for m in plain_msgs)
    assert all(m.message_expiry_s for m in sealed_msgs)
    expected_kid = keys.clinic_jwk().thumbprint()  # RFC 7638, computed by jwcrypto
    for s, p in zip(sealed_msgs, plain_msgs, strict=True):
        # no plaintext on the wire
        assert b"Observation" not in s.payload and b"patient-" not in s.payload
        jwe_header, jws_header, inner = open_with_jwcrypto(keys, s.payload)
        assert inner == p.payload  # byte-identical to what plain mode sends
        assert jwe_header["alg"] == "ECDH-ES+A256KW" and jwe_header["enc"] == "A256GCM"
        assert jwe_header["cty"] == "JOSE" and jwe_header["kid"] == expected_kid
        assert jws_header["alg"] == "ES256"
        bundle = json.loads(inner)
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"


async def test_a_bundle_that_is_not_acknowledged_stays_pending_and_is_sealed_again(
    keys: Keys,
) -> None:
    outbox = FakeOutbox()
    ids = outbox.add_readings(make_readings(3, ("patient-a",)))
    connector = FakeConnector()
    clock = RecordingClock()
    fwd = forwarder(keys, outbox, connector, encoding_for(keys.config()), clock)
    async with forwarding(fwd):
        await eventually(lambda: len(connector.links) == 1 and bool(connector.link.obs()),
                         what="first bundle")
        first = connector.link.obs()
        connector.link.drop()
        await settle()
        assert outbox.pending_ids() == set(ids)  # nothing delivered without its PUBACK
        clock.step(60)  # past the reconnect backoff
        await eventually(lambda: len(connector.links) == 2 and bool(connector.links[1].obs()),
                         what="re-sent after reconnect")
        again = connector.links[1].obs()
        # a fresh envelope (new ephemeral key) around the same Bundle
        assert again[0].payload != first[0].payload
        assert open_with_jwcrypto(keys, again[0].payload)[2] == \
            open_with_jwcrypto(keys, first[0].payload)[2]
        connector.links[1].ack(*again)
        await eventually(lambda: not outbox.rows, what="delivered")
    assert sorted(outbox.delivered) == sorted(ids)


async def test_compressed_sealing_opens_with_jwcrypto_to_the_plain_bundle(keys: Keys) -> None:
    sealed = encoding_for(keys.config(compress=True))
    assert sealed.content_type == CONTENT_TYPE
    zipped_msgs, zipped_box = await publish_all(keys, sealed)
    unzipped_msgs, _ = await publish_all(keys, encoding_for(keys.config()))
    plain_msgs, _ = await publish_all(keys, encoding_for(keys.config("off")))
    assert len(zipped_box.delivered) == 10
    assert [m.topic for m in zipped_msgs] == [m.topic for m in plain_msgs]
    for z, u, p in zip(zipped_msgs, unzipped_msgs, plain_msgs, strict=True):
        jwe_header, _, inner = open_with_jwcrypto(keys, z.payload)
        assert jwe_header["zip"] == "DEF"
        assert "zip" not in open_with_jwcrypto(keys, u.payload)[0]
        assert inner == p.payload
        assert len(z.payload) < len(u.payload)


def test_describe_says_when_the_envelope_is_compressed(keys: Keys) -> None:
    kid = keys.clinic_jwk().thumbprint()
    assert describe(keys.config(compress=True).e2e) == \
        f"sign+encrypt (clinic key {kid}), compressed (JWE zip DEF)"
    assert "compress" not in describe(keys.config().e2e)


async def test_uplink_probe_reports_compression(keys: Keys) -> None:
    from edge.uplink.probe import probe
    from tests.support.mosquitto import free_port

    cfg = keys.config(compress=True, port=free_port())
    result = await probe(cfg.uplink, HUB, step_timeout=2, e2e=cfg.e2e)
    assert result.reason == "unreachable"  # nothing listens: the e2e line is there all the same
    kid = keys.clinic_jwk().thumbprint()
    assert f"  e2e        sign+encrypt (clinic key {kid}), compressed (JWE zip DEF)" in \
        result.lines()


def test_describe_names_the_mode_and_the_clinic_key(keys: Keys) -> None:
    assert describe(keys.config().e2e) == \
        f"sign+encrypt (clinic key {keys.clinic_jwk().thumbprint()})"
    assert describe(keys.config("off").e2e).startswith("off ")


def test_signing_key_from_a_systemd_credential(keys: Keys, tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "client-key").write_bytes(keys.pki.hub.key.read_bytes())
    cfg = keys.config(client_key=None, client_key_credential="client-key")
    signer = load_signer(cfg.uplink, environ={"CREDENTIALS_DIRECTORY": str(creds)})
    assert signer.key.public_key() == keys.hub_cert().public_key()
    with pytest.raises(KeyUnavailable, match="CREDENTIALS_DIRECTORY"):
        load_signer(cfg.uplink, environ={})


def test_an_encrypted_client_key_needs_its_passphrase(keys: Keys, tmp_path: Path) -> None:
    ca = make_ca()
    issued = issue(ca, HUB)
    files = write_identity(tmp_path / "enc", "hub", issued)
    write_key(files.key, issued.key, passphrase=b"s3cret")
    cfg = keys.config(client_cert=str(files.cert), client_key=str(files.key))
    with pytest.raises(KeyUnavailable, match="passphrase"):
        load_signer(cfg.uplink)
    pw = tmp_path / "pw"
    pw.write_bytes(b"s3cret\n")
    pw.chmod(0o600)
    cfg = keys.config(client_cert=str(files.cert), client_key=str(files.key),
                      client_key_passphrase_file=str(pw))
    assert load_signer(cfg.uplink).key.public_key() == issued.key.public_key()


def test_a_client_key_that_cannot_sign_es256_is_refused(keys: Keys, tmp_path: Path) -> None:
    rsa_key = tmp_path / "rsa.key"
    rsa_key.write_bytes(rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    with pytest.raises(KeyUnavailable, match="P-256"):
        encoding_for(keys.config(client_key=str(rsa_key)))
    # plain mode does not need it
    assert encoding_for(keys.config("off", client_key=str(rsa_key))).content_type == \
        FHIR_CONTENT_TYPE


def test_a_certificate_of_another_key_is_refused(keys: Keys) -> None:
    other = keys.pki.clinicians["clinician-1"].cert
    with pytest.raises(KeyUnavailable, match="does not belong"):
        encoding_for(keys.config(client_cert=str(other)))


def test_an_unreadable_recipient_key_is_a_config_error(keys: Keys) -> None:
    keys.recipient.write_text("garbage\n")
    with pytest.raises(ConfigError) as exc:
        encoding_for(keys.config())
    assert exc.value.problems[0].startswith("e2e.recipient_key: ")
