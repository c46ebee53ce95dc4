"""A development PKI: a private CA, a broker certificate, hub / clinician / admin client
certificates, all ECDSA P-256, keys written 0600; and a hub key + CSR for a real CA. Behind
``edge pki dev|csr``. Hostile certificates for tests are in ``devtools.pki``.

Not for production CAs: the keys are generated and written unencrypted by design.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge.uplink.pins import spki_pin

_DAY = dt.timedelta(days=1)


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pin(self) -> str:
        """The certificate's SPKI pin."""
        return spki_pin(self.cert.public_bytes(serialization.Encoding.DER))


@dataclass(frozen=True)
class CertFiles:
    """Where an identity's certificate and key were written, and its pin."""

    cert: Path
    key: Path
    pin: str


@dataclass
class DevPki:
    """Paths of a written development PKI."""

    out: Path
    ca: CertFiles
    broker: CertFiles
    hub: CertFiles
    hub_id: str
    clinicians: dict[str, CertFiles] = field(default_factory=dict)
    admin: CertFiles | None = None
    #: extra identities written later (``devtools.pki`` adds hostile broker certificates)
    extra: dict[str, CertFiles] = field(default_factory=dict)


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str, org: str = "edge dev") -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def make_ca(
    cn: str = "edge dev CA",
    *,
    days: int = 3650,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> Issued:
    """A self-signed CA certificate (path length 0)."""
    key = key or new_key()
    now = _now()
    name = _name(cn)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _DAY)
        .not_valid_after(now + days * _DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def issue(
    ca: Issued,
    cn: str,
    *,
    server: bool = False,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    key: ec.EllipticCurvePrivateKey | None = None,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    days: int = 825,
) -> Issued:
    """An end-entity certificate signed by ``ca``: a TLS server certificate with the given
    subject alternative names, or (``server=False``) a TLS client certificate for ``cn``."""
    key = key or new_key()
    now = _now()
    nb = not_before or now - _DAY
    na = not_after or now + days * _DAY
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(nb)
        .not_valid_after(na)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def make_csr(cn: str, key: ec.EllipticCurvePrivateKey) -> x509.CertificateSigningRequest:
    """A CSR for a hub client certificate with ``cn`` (the hub id)."""
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )


# --- writing files -----------------------------------------------------------------------------


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a new 0600 file (never briefly world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def key_pem(key: ec.EllipticCurvePrivateKey, passphrase: bytes | None = None) -> bytes:
    """PKCS#8 PEM of ``key``, encrypted when a passphrase is given."""
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def write_key(path: Path, key: ec.EllipticCurvePrivateKey, passphrase: bytes | None = None) -> None:
    """Write a private key as a 0600 PEM file."""
    _write_private(path, key_pem(key, passphrase))


def write_cert(path: Path, *certs: x509.Certificate) -> None:
    """Write one or more certificates as PEM (0644)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    path.chmod(0o644)


def write_identity(out: Path, name: str, issued: Issued) -> CertFiles:
    """Write ``<name>.crt`` and ``<name>.key`` into ``out``."""
    cert_path, key_path = out / f"{name}.crt", out / f"{name}.key"
    write_cert(cert_path, issued.cert)
    write_key(key_path, issued.key)
    return CertFiles(cert_path, key_path, issued.pin)


def write_dev_pki(
    out: Path,
    *,
    hub_id: str = "hub-1",
    clinicians: Mapping[str, Sequence[str]] | None = None,
    admin: str | None = "admin",
    broker_hosts: Sequence[str] = ("localhost",),
    broker_ips: Sequence[str] = ("127.0.0.1", "::1"),
) -> DevPki:
    """Generate and write a complete development PKI into ``out`` (created 0700).

    ``clinicians`` maps clinician names to their patients (only the names matter here; the
    broker ACL uses the assignment).
    """
    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o700)
    ca = make_ca()
    ca_path = out / "ca.crt"
    write_cert(ca_path, ca.cert)
    # The CA key stays beside it (0600): a dev CA, so more certificates can be issued by hand.
    write_key(out / "ca.key", ca.key)
    ca_files = CertFiles(ca_path, out / "ca.key", ca.pin)

    broker = issue(ca, "broker", server=True, dns=broker_hosts, ips=broker_ips)
    pki = DevPki(
        out=out,
        ca=ca_files,
        broker=write_identity(out, "broker", broker),
        hub=write_identity(out, "hub", issue(ca, hub_id)),
        hub_id=hub_id,
    )
    for name in clinicians or {"clinician-1": ()}:
        pki.clinicians[name] = write_identity(out, name, issue(ca, name))
    if admin:
        pki.admin = write_identity(out, admin, issue(ca, admin))
    return pki
