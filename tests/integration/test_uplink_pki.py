"""Pins, the SSL context, the development PKI and the pki CLI, on a PKI written to disk (no
network). The error translation is tested without files in tests/unit/test_uplink_tls.py."""

from __future__ import annotations

import base64
import hashlib
import ssl
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edge.cli import main as cli_main
from edge.config import UplinkConfig
from edge.errors import KeyUnavailable, PinMismatch
from edge.uplink import pki
from edge.uplink.pins import PinVerifier, spki_pin
from edge.uplink.tls import build_context
from tests.support.pki import TestPki, make_pki

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tpki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_pki(tmp_path_factory.mktemp("pki"), "hub-7", {"clinician-1": ["patient-a"]})


def der(path: Path) -> bytes:
    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(
        serialization.Encoding.DER
    )


def test_pin_is_sha256_of_the_spki(tpki: TestPki) -> None:
    cert = x509.load_pem_x509_certificate(tpki.broker.cert.read_bytes())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    expected = "sha256/" + base64.b64encode(hashlib.sha256(spki).digest()).decode()
    assert spki_pin(tpki.broker.cert.read_bytes()) == expected  # PEM
    assert spki_pin(der(tpki.broker.cert)) == expected  # DER
    assert tpki.broker.pin == expected
    # same CA, another key: another pin
    assert tpki.hostile["same_ca_other_key"].pin != expected


def test_verifier_matches_leaf_or_issuing_ca(tpki: TestPki) -> None:
    leaf = der(tpki.broker.cert)
    by_leaf = PinVerifier.from_files([tpki.broker.pin], tpki.ca.cert).check(leaf)
    assert (by_leaf.matched_on, by_leaf.matched) == ("leaf", tpki.broker.pin)
    by_ca = PinVerifier.from_files([tpki.ca.pin], tpki.ca.cert).check(leaf)
    assert (by_ca.matched_on, by_ca.presented) == ("ca", tpki.broker.pin)
    # Rotation: two pins, the new one matches.
    two = PinVerifier.from_files(["sha256/" + "A" * 43 + "=", tpki.broker.pin], tpki.ca.cert)
    assert two.check(leaf).matched == tpki.broker.pin


def test_verifier_refuses_other_key_and_other_ca(tpki: TestPki) -> None:
    v = PinVerifier.from_files([tpki.broker.pin], tpki.ca.cert)
    other_key = tpki.hostile["same_ca_other_key"]
    with pytest.raises(PinMismatch) as exc:
        v.check(der(other_key.cert))
    assert exc.value.presented_pin == other_key.pin
    assert exc.value.reason == "pin_mismatch"
    # A CA pin only vouches for certificates that CA really signed.
    v_ca = PinVerifier.from_files([tpki.ca.pin], tpki.ca.cert)
    with pytest.raises(PinMismatch):
        v_ca.check(der(tpki.hostile["other_ca"].cert))


def cfg_for(tpki: TestPki, **kw: Path | str | None) -> UplinkConfig:
    return tpki.uplink_config(8883, host="127.0.0.1", **kw)


def test_context_settings(tpki: TestPki) -> None:
    ctx = build_context(cfg_for(tpki))
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname is True
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    assert ctx.options & ssl.OP_NO_COMPRESSION
    assert ctx.options & ssl.OP_NO_RENEGOTIATION
    # Only our CA: no system trust store.
    cas = ctx.get_ca_certs()
    # the ssl module's documented form: RDNs of (name, value) pairs
    subject = cast("tuple[tuple[tuple[str, str], ...], ...]", cas[0]["subject"])
    assert len(cas) == 1 and dict(rdn[0] for rdn in subject)["commonName"] == "edge dev CA"
    ctx12 = build_context(cfg_for(tpki, tls_min_version="1.2"))
    assert ctx12.minimum_version == ssl.TLSVersion.TLSv1_2
    tls12 = [c for c in ctx12.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all(c["aead"] and c["kea"] == "kx-ecdhe" for c in tls12)


def test_encrypted_key_needs_its_passphrase(tpki: TestPki, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(tpki.hub.key.read_bytes(), None)
    enc = tmp_path / "hub-enc.key"
    pki.write_key(enc, key, passphrase=b"s3cret")  # type: ignore[arg-type]
    pw = tmp_path / "pw"
    pw.write_bytes(b"s3cret\n")
    pw.chmod(0o600)
    build_context(cfg_for(tpki, client_key=enc, client_key_passphrase_file=pw))
    with pytest.raises(KeyUnavailable):
        build_context(cfg_for(tpki, client_key=enc))
    pw.write_bytes(b"wrong\n")
    with pytest.raises(KeyUnavailable):
        build_context(cfg_for(tpki, client_key=enc, client_key_passphrase_file=pw))


def test_key_from_systemd_credential(tpki: TestPki, tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "uplink-key").write_bytes(tpki.hub.key.read_bytes())
    cfg = cfg_for(tpki, client_key=None, client_key_credential="uplink-key")
    build_context(cfg, environ={"CREDENTIALS_DIRECTORY": str(creds)})
    with pytest.raises(KeyUnavailable, match="CREDENTIALS_DIRECTORY"):
        build_context(cfg, environ={})
    with pytest.raises(KeyUnavailable, match="not found"):
        build_context(cfg_for(tpki, client_key=None, client_key_credential="nope"),
                      environ={"CREDENTIALS_DIRECTORY": str(creds)})


def test_mismatched_key_is_refused(tpki: TestPki) -> None:
    with pytest.raises(KeyUnavailable):
        build_context(cfg_for(tpki, client_key=tpki.admin.key))


def test_dev_pki_files(tpki: TestPki) -> None:
    for f in [tpki.ca, tpki.broker, tpki.hub, tpki.admin, *tpki.hostile.values()]:
        assert stat.S_IMODE(f.key.stat().st_mode) == 0o600
        cert = x509.load_pem_x509_certificate(f.cert.read_bytes())
        assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    hub = x509.load_pem_x509_certificate(tpki.hub.cert.read_bytes())
    assert hub.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "hub-7"
    broker = x509.load_pem_x509_certificate(tpki.broker.cert.read_bytes())
    san = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert any(str(ip) == "127.0.0.1" for ip in san.get_values_for_type(x509.IPAddress))
    expired = x509.load_pem_x509_certificate(tpki.hostile["expired"].cert.read_bytes())
    assert expired.not_valid_after_utc < datetime.now(UTC) < broker.not_valid_after_utc
    assert stat.S_IMODE(tpki.dir.stat().st_mode) == 0o700


def test_cli_pki_dev_pin_csr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "dev"
    assert cli_main(["pki", "dev", "--out", str(out), "--hub-id", "hub-9"]) == 0
    text = capsys.readouterr().out
    broker_pin = spki_pin((out / "broker.crt").read_bytes())
    assert broker_pin in text and "pins = [" in text
    assert cli_main(["pki", "pin", str(out / "broker.crt")]) == 0
    assert capsys.readouterr().out.strip() == broker_pin
    assert cli_main(["pki", "csr", "--out", str(tmp_path / "csr"), "--hub-id", "hub-9"]) == 0
    csr = x509.load_pem_x509_csr((tmp_path / "csr" / "hub.csr").read_bytes())
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "hub-9"
    assert stat.S_IMODE((tmp_path / "csr" / "hub.key").stat().st_mode) == 0o600
    assert cli_main(["pki", "pin", str(tmp_path / "missing.crt")]) == 2
