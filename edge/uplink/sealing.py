"""The hub's choice of message encoding, from ``[e2e]``: plain FHIR JSON, or each Bundle sealed
end to end (:func:`edge.uplink.envelope.seal`: JWE to the clinic around a JWS by the hub).

Keys are loaded once, when the encoder is made: the signing key is the hub's TLS client key
(file or systemd credential, found exactly as the TLS context finds it), the ``x5c`` chain is
the PEM in ``uplink.client_cert`` (leaf first), the recipient is ``e2e.recipient_key``; with
``e2e.compress`` the JWE carries ``zip`` DEF. The encoder itself is pure and synchronous, like
the FHIR one it wraps.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge import fhir
from edge.config import E2eConfig, GatewayConfig, UplinkConfig
from edge.config_env import read_recipient_key
from edge.errors import KeyUnavailable
from edge.uplink.envelope import CONTENT_TYPE, seal, thumbprint
from edge.uplink.fhir_encoding import FHIR_CONTENT_TYPE, fhir_encoder
from edge.uplink.ports import Encoder, PendingLike
from edge.uplink.tls import client_key_path, key_passphrase


@dataclass(frozen=True)
class Encoding:
    """An encoder and the MQTT 5 content type of the payloads it makes."""

    encode: Encoder
    content_type: str


@dataclass(frozen=True)
class Signer:
    """The hub's signing identity: its TLS client key and certificate chain (DER, leaf first)."""

    key: ec.EllipticCurvePrivateKey
    chain_der: tuple[bytes, ...]


@dataclass(frozen=True)
class SealingEncoder:
    """Rows -> the FHIR Bundle exactly as in plain mode -> JWE(JWS(Bundle)) as ASCII bytes."""

    hub_id: str
    signer: Signer
    recipient: ec.EllipticCurvePublicKey
    #: JWE ``zip`` DEF: the JWS is deflated before it is encrypted (``[e2e] compress``)
    compress: bool = False

    def __call__(self, rows: Sequence[PendingLike]) -> bytes:
        bundle = fhir.bundle_bytes([r.reading() for r in rows], hub_id=self.hub_id)
        return self.seal(bundle)

    def seal(self, bundle_json: bytes) -> bytes:
        """One Bundle's envelope (a fresh ephemeral key and IV each time)."""
        token = seal(bundle_json, signing_key=self.signer.key,
                     cert_chain_der=self.signer.chain_der, recipient=self.recipient,
                     compress=self.compress)
        return token.encode("ascii")


def load_signer(cfg: UplinkConfig, *, environ: Mapping[str, str] | None = None) -> Signer:
    """The client key and certificate chain; KeyUnavailable (with its fix) when they cannot
    be read, do not belong together, or the key is not P-256 (ES256 needs it)."""
    env = os.environ if environ is None else environ
    key_path = client_key_path(cfg, env)
    password = key_passphrase(cfg)
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password or None)
    except OSError as exc:
        raise KeyUnavailable(
            "the uplink client key cannot be read — fix: check its path and permissions"
        ) from exc
    except TypeError as exc:  # encrypted without a passphrase, or a passphrase it lacks
        raise KeyUnavailable(
            "the uplink client key is encrypted — fix: set uplink.client_key_passphrase_file"
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyUnavailable(
            "the uplink client key is not a readable PEM key or the passphrase is wrong — "
            "fix: check the key and uplink.client_key_passphrase_file"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
        key.curve, ec.SECP256R1
    ):
        raise KeyUnavailable(
            'e2e mode "sign+encrypt" signs with the hub\'s client key, which must be P-256 — '
            "fix: issue the hub a P-256 key (edge pki csr) or set [e2e] mode = \"off\""
        )
    try:
        certs = x509.load_pem_x509_certificates(cfg.client_cert.read_bytes())
    except (OSError, ValueError) as exc:
        raise KeyUnavailable(
            "uplink.client_cert cannot be read as PEM certificates — fix: check the path"
        ) from exc
    if certs[0].public_key() != key.public_key():
        raise KeyUnavailable(
            "uplink.client_cert does not belong to the client key — fix: put the hub's own "
            "certificate first in uplink.client_cert"
        )
    return Signer(key, tuple(c.public_bytes(serialization.Encoding.DER) for c in certs))


def encoding_for(
    cfg: GatewayConfig, *, environ: Mapping[str, str] | None = None
) -> Encoding:
    """What ``[e2e]`` asks for: the sealing encoder (keys loaded now) or plain FHIR."""
    if not cfg.e2e.enabled:
        return Encoding(fhir_encoder(cfg.hub.id), FHIR_CONTENT_TYPE)
    if cfg.e2e.recipient_key is None:
        raise KeyUnavailable(
            'e2e mode "sign+encrypt" needs e2e.recipient_key — fix: run edge check-config'
        )
    recipient = read_recipient_key(cfg.e2e.recipient_key)
    sealer = SealingEncoder(cfg.hub.id, load_signer(cfg.uplink, environ=environ), recipient,
                            compress=cfg.e2e.compress)
    return Encoding(sealer, CONTENT_TYPE)


def describe(e2e: E2eConfig) -> str:
    """One line for operators: the mode, which clinic key Bundles are sealed to (its
    RFC 7638 thumbprint, the JWE ``kid``, which `clinic keys public` can be compared with),
    and whether the JWE plaintext is compressed (said only when it is: the line without it is
    the uncompressed default, and stays exactly what it was before the setting existed)."""
    if not e2e.enabled:
        return "off (plaintext FHIR inside TLS; the broker can read readings)"
    zipped = ", compressed (JWE zip DEF)" if e2e.compress else ""
    if e2e.recipient_key is None:
        return f"sign+encrypt (no recipient key){zipped}"
    kid = thumbprint(read_recipient_key(e2e.recipient_key))
    return f"sign+encrypt (clinic key {kid}){zipped}"
