"""SPKI pinning: ``sha256/<base64>`` of a certificate's SubjectPublicKeyInfo.

A connection is accepted when the broker's leaf certificate or the CA certificate (from the
configured CA file) that issued it has a pinned public key. Pinning the CA survives broker
certificate renewals; pinning the leaf catches a CA that issued a second broker certificate.
Two pins allow a rotation without downtime.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from edge.errors import ConfigError, PinMismatch


def _load_cert(data: bytes) -> x509.Certificate:
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def pin_of_certificate(cert: x509.Certificate) -> str:
    """The SPKI pin of a parsed certificate."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256/" + base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


def spki_pin(cert_der_or_pem: bytes) -> str:
    """The SPKI pin of one certificate given as DER or PEM bytes."""
    return pin_of_certificate(_load_cert(cert_der_or_pem))


def load_ca_certificates(ca_file: Path) -> list[x509.Certificate]:
    """Every certificate in a PEM CA file; ConfigError when none can be read."""
    try:
        certs = x509.load_pem_x509_certificates(ca_file.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            "uplink.ca_file unreadable",
            [f"uplink.ca_file: {ca_file} is not a readable PEM certificate file — "
             "fix: point it at the private CA's certificate"],
        ) from exc
    return certs


@dataclass(frozen=True)
class PinCheck:
    """The outcome of a successful pin check."""

    #: the configured pin that matched
    matched: str
    #: ``leaf`` or ``ca``
    matched_on: str
    #: the leaf's pin (what the broker presented)
    presented: str


class PinVerifier:
    """Checks a broker's leaf certificate against configured pins."""

    def __init__(self, pins: Sequence[str], ca_certs: Iterable[x509.Certificate]) -> None:
        self._pins = frozenset(pins)
        self._cas = list(ca_certs)

    @classmethod
    def from_files(cls, pins: Sequence[str], ca_file: Path) -> PinVerifier:
        """A verifier using the CA certificates of ``ca_file``."""
        return cls(pins, load_ca_certificates(ca_file))

    def issuers_of(self, leaf: x509.Certificate) -> list[x509.Certificate]:
        """The configured CA certificates that really signed ``leaf`` (name and signature)."""
        found = []
        for ca in self._cas:
            if ca.subject != leaf.issuer:
                continue
            try:
                leaf.verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature):
                continue
            found.append(ca)
        return found

    def check(self, leaf_der: bytes) -> PinCheck:
        """Return how the leaf matched; raise :class:`PinMismatch` when nothing matches."""
        leaf = x509.load_der_x509_certificate(leaf_der)
        presented = pin_of_certificate(leaf)
        if presented in self._pins:
            return PinCheck(presented, "leaf", presented)
        for ca in self.issuers_of(leaf):
            ca_pin = pin_of_certificate(ca)
            if ca_pin in self._pins:
                return PinCheck(ca_pin, "ca", presented)
        raise PinMismatch(presented)
