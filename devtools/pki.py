"""Hostile broker certificates for tests, issued on top of a development PKI
(:func:`edge.uplink.pki.write_dev_pki`): expired, wrong host, another CA, same CA with
another key. Each is written as ``broker-<kind>.crt/.key`` and recorded in ``DevPki.extra``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge.uplink.pki import CertFiles, DevPki, Issued, issue, make_ca, write_cert, write_identity

#: the hostile broker certificates :func:`write_hostile` can add
HOSTILE_KINDS = ("expired", "wrong_host", "other_ca", "same_ca_other_key")

_DAY = dt.timedelta(days=1)


def load_issued(files: CertFiles) -> Issued:
    """A written identity (certificate and unencrypted key) read back, e.g. the dev CA."""
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{files.key}: not an EC private key")
    return Issued(cert, key)


def hostile_broker_cert(
    kind: str, ca: Issued, *, broker_hosts: Sequence[str], broker_ips: Sequence[str]
) -> tuple[Issued, Issued | None]:
    """The hostile broker certificate of ``kind``, and the other CA that issued it (if any)."""
    if kind == "expired":
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        bad = issue(
            ca, "broker", server=True, dns=broker_hosts, ips=broker_ips,
            not_before=now - 30 * _DAY, not_after=now - _DAY,
        )
        return bad, None
    if kind == "wrong_host":
        return issue(ca, "broker", server=True, dns=["wrong.example.invalid"]), None
    if kind == "other_ca":
        other = make_ca("another CA")
        return issue(other, "broker", server=True, dns=broker_hosts, ips=broker_ips), other
    if kind == "same_ca_other_key":
        return issue(ca, "broker", server=True, dns=broker_hosts, ips=broker_ips), None
    raise ValueError(f"unknown hostile certificate kind {kind!r}; use {HOSTILE_KINDS}")


def write_hostile(
    pki: DevPki,
    kinds: Sequence[str] = HOSTILE_KINDS,
    *,
    broker_hosts: Sequence[str] = ("localhost",),
    broker_ips: Sequence[str] = ("127.0.0.1", "::1"),
) -> DevPki:
    """Issue the hostile broker certificates ``kinds`` with the PKI's own CA (``other_ca``
    also writes ``other-ca.crt``); returns ``pki`` with them in ``pki.extra``."""
    if not kinds:
        return pki
    ca = load_issued(pki.ca)
    for kind in kinds:
        bad, other = hostile_broker_cert(kind, ca, broker_hosts=broker_hosts, broker_ips=broker_ips)
        if other is not None:
            write_cert(pki.out / "other-ca.crt", other.cert)
        pki.extra[kind] = write_identity(pki.out, f"broker-{kind}", bad)
    return pki
