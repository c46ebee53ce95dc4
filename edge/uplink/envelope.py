"""The end-to-end envelope of one FHIR Bundle: JWE(JWS(Bundle)), standard JOSE, no I/O.

- Inner: a compact JWS (RFC 7515), ``alg`` ES256 (raw r||s), signed with the hub's TLS client
  key, the hub's certificate chain in ``x5c`` (base64 DER, leaf first).
- Outer: a compact JWE (RFC 7516), ``alg`` ECDH-ES+A256KW (a fresh ephemeral P-256 key per
  message), ``enc`` A256GCM, ``kid`` the RFC 7638 thumbprint of the clinic key, ``cty`` JOSE.
- Optionally (``[e2e] compress``, off by default) ``zip`` DEF (RFC 7516 §4.1.3): the JWE
  plaintext, the JWS compact, is raw DEFLATE (RFC 1951). :func:`open_envelope` always accepts
  both forms, so one clinic serves hubs of either setting; any other ``zip`` is refused.

:func:`seal` is the hub side; :func:`open_envelope` and :func:`verify_signer` the receiving
side (the clinic imports them; this module never imports the clinic).

Library: joserfc — typed (``py.typed``, so ``mypy --strict`` checks our calls), built on
``cryptography`` (already a dependency), and every call takes an explicit algorithm allow-list,
which closes algorithm-confusion attacks by construction. Its default size limits (512-byte
JWS header, 64 KiB JWE ciphertext) are too small for an ``x5c`` header and a 256 KiB Bundle,
so this module uses its own registries with limits derived from :data:`MAX_ENVELOPE_BYTES`.
Its DEFLATE model (a 250 KiB inflate cap, lenient about zlib headers) is replaced here too:
see :class:`_Deflate`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from joserfc import jwe, jws
from joserfc.errors import JoseError
from joserfc.jwa import JWEZipModel
from joserfc.jwk import ECKey

from edge.errors import Rejected

JWE_ALG = "ECDH-ES+A256KW"
JWE_ENC = "A256GCM"
JWS_ALG = "ES256"
#: MQTT 5 content type of an enveloped Bundle
CONTENT_TYPE = "application/jose"
#: a hub Bundle is at most 256 KiB; two base64 layers make that ~460 KiB; 1 MiB leaves room
MAX_ENVELOPE_BYTES = 1024 * 1024
#: an x5c chain of a few P-256 certificates fits easily; anything larger is hostile
MAX_HEADER_BYTES = 16 * 1024
#: the JWE ``zip`` value of a compressed envelope (RFC 7516 §4.1.3, RFC 7518 §7.3)
ZIP_DEF = "DEF"
#: the largest inner JWS an envelope may carry: what the base64url ciphertext of an
#: uncompressed envelope of MAX_ENVELOPE_BYTES can hold, so that compression never lets
#: through more than the uncompressed form could (a 256 KiB Bundle's JWS is ~350 KB)
MAX_INNER_BYTES = MAX_ENVELOPE_BYTES * 3 // 4
#: zlib level of the hub's DEFLATE. Measured on a Bundle of 50 readings (JWS 91.5 KB):
#: level 1 -> 11.2-11.4 KB in ~420 us, level 6 -> 8.7 KB in ~980 us, level 9 -> 8.6 KB in
#: ~1,100 us. Level 6 costs ~0.5 ms more per Bundle than level 1 and saves another ~2.5 KB
#: (3.3 KB of base64url JWE): ~5 bytes per extra us, faster than any home uplink
#: (10 Mbit/s is 1.25 bytes/us) could send them, and on a metered link the bytes are what is
#: paid for, while ~0.5 ms per 50-reading Bundle is ~10 us of CPU per reading. Level 9 saves
#: nothing more. Sealing with level 6 costs ~0.5 ms more than sealing uncompressed (the
#: smaller plaintext makes AES-GCM and base64 cheaper), and opening costs less.
DEFLATE_LEVEL = 6


class EnvelopeError(Rejected):
    """An envelope that cannot be opened or trusted; ``reason`` is a stable counter name."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Opened:
    """What :func:`open_envelope` found inside a trusted-to-be-checked envelope."""

    #: the JWS protected header (``alg``, ``x5c``)
    jws_header: dict[str, Any]
    #: the Bundle bytes, exactly as the hub signed them
    payload: bytes
    #: the signer's certificate (x5c[0]); the signature was checked against its key
    leaf: x509.Certificate
    #: the rest of x5c (intermediates), possibly empty
    chain: list[x509.Certificate]
    #: the ``kid`` of the clinic key that opened it
    kid: str


class _Deflate(JWEZipModel):
    """``zip`` DEF as this module needs it (joserfc's own DeflateZipModel caps inflating at
    250 KiB, below a maximal Bundle's ~350 KB JWS, and also takes zlib-wrapped data):

    - compress: raw DEFLATE (RFC 1951, no zlib header or trailer) at :data:`DEFLATE_LEVEL`;
    - decompress: raw DEFLATE only, into at most :data:`MAX_INNER_BYTES`, never allocating
      more (``decompress(data, cap)``: a zip bomb stops at the cap), and the stream must end
      exactly where the ciphertext ends. Anything else is EnvelopeError ``bad_envelope``.
    """

    name = ZIP_DEF
    description = "DEFLATE (RFC 1951)"

    def compress(self, s: bytes) -> bytes:
        packer = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
        return packer.compress(s) + packer.flush()

    def decompress(self, s: bytes) -> bytes:
        unpacker = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            out = unpacker.decompress(s, MAX_INNER_BYTES)
        except zlib.error as exc:
            raise EnvelopeError("bad_envelope", "compressed content is not DEFLATE") from exc
        if unpacker.unconsumed_tail or (len(out) >= MAX_INNER_BYTES and not unpacker.eof):
            raise EnvelopeError(
                "bad_envelope", f"compressed content inflates beyond {MAX_INNER_BYTES} bytes"
            )
        if not unpacker.eof or unpacker.unused_data:
            raise EnvelopeError("bad_envelope", "compressed content is truncated or padded")
        return out


def _jws_registry() -> jws.JWSRegistry:
    reg = jws.JWSRegistry(algorithms=[JWS_ALG])
    reg.max_header_length = MAX_HEADER_BYTES
    reg.max_payload_length = MAX_ENVELOPE_BYTES
    return reg


def _jwe_registry() -> jwe.JWERegistry:
    reg = jwe.JWERegistry(algorithms=[JWE_ALG, JWE_ENC, ZIP_DEF])
    # joserfc keeps its models in one class-level table that every registry shares; this
    # registry gets its own, so that "DEF" is _Deflate here and joserfc's model elsewhere
    shared = jwe.JWERegistry.algorithms
    reg.algorithms = {
        "alg": {JWE_ALG: shared["alg"][JWE_ALG]},
        "enc": {JWE_ENC: shared["enc"][JWE_ENC]},
        "zip": {ZIP_DEF: _Deflate()},
    }
    reg.max_protected_header_length = MAX_HEADER_BYTES
    reg.max_ciphertext_length = MAX_ENVELOPE_BYTES
    return reg


_JWS = _jws_registry()
# Web PKI rules, except that hub client certificates name the hub in the CN and need no SAN.
_CA_POLICY = verification.ExtensionPolicy.webpki_defaults_ca()
_EE_POLICY = verification.ExtensionPolicy.webpki_defaults_ee().may_be_present(
    x509.SubjectAlternativeName, verification.Criticality.AGNOSTIC, None
)
_JWE = _jwe_registry()


def thumbprint(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> str:
    """The RFC 7638 JWK thumbprint (SHA-256, base64url) of a P-256 key: the envelope ``kid``."""
    pub = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return ECKey.import_key(pub).thumbprint()


def _p256(key: Any, what: str) -> None:
    if not isinstance(key.curve, ec.SECP256R1):
        raise ValueError(f"{what} must be a P-256 key")


def seal(
    bundle_json: bytes,
    *,
    signing_key: ec.EllipticCurvePrivateKey,
    cert_chain_der: Sequence[bytes],
    recipient: ec.EllipticCurvePublicKey,
    compress: bool = False,
) -> str:
    """JWE(JWS(``bundle_json``)) as a compact string (ASCII; send it as UTF-8 bytes). With
    ``compress`` the JWE header carries ``zip`` DEF and its plaintext is the JWS, deflated."""
    _p256(signing_key, "the signing key")
    _p256(recipient, "the recipient key")
    if not cert_chain_der:
        raise ValueError("x5c needs at least the signer's certificate")
    header = {
        "alg": JWS_ALG,
        "x5c": [base64.b64encode(der).decode("ascii") for der in cert_chain_der],
    }
    inner = jws.serialize_compact(
        header, bundle_json, ECKey.import_key(signing_key), registry=_JWS
    )
    rkey = ECKey.import_key(recipient)
    protected = {"alg": JWE_ALG, "enc": JWE_ENC, "kid": rkey.thumbprint(), "cty": "JOSE"}
    if compress:
        protected["zip"] = ZIP_DEF
    return jwe.encrypt_compact(protected, inner, rkey, registry=_JWE)


def _b64url_json(part: str) -> dict[str, Any]:
    pad = "=" * (-len(part) % 4)
    doc = json.loads(base64.urlsafe_b64decode(part + pad))
    if not isinstance(doc, dict):
        raise ValueError("header is not a JSON object")
    return doc


def peek_header(token: str | bytes) -> dict[str, Any]:
    """The JWE protected header without decrypting; EnvelopeError ``bad_envelope``."""
    data = token.encode("utf-8", "surrogatepass") if isinstance(token, str) else token
    # a count and one slice, not a split: a token is ~120 KB and only its first part is read
    if data.count(b".") != 4 or data.index(b".") > MAX_HEADER_BYTES:
        raise EnvelopeError("bad_envelope", "not a compact JWE")
    try:
        return _b64url_json(data[:data.index(b".")].decode("ascii"))
    except (ValueError, binascii.Error, RecursionError) as exc:  # UnicodeDecodeError included
        # RecursionError: a header nested thousands deep (found by fuzzing)
        raise EnvelopeError("bad_envelope", "unreadable JWE header") from exc


def open_envelope(
    token: str | bytes,
    private_keys_by_kid: Mapping[str, ec.EllipticCurvePrivateKey],
) -> Opened:
    """Decrypt with the key named by ``kid`` and check the inner ES256 signature against
    x5c[0]. The certificate itself is *not* trusted here: call :func:`verify_signer`.

    Both uncompressed and ``zip`` DEF envelopes open (inflated into at most
    :data:`MAX_INNER_BYTES`).

    Raises :class:`EnvelopeError` with reason ``oversize``, ``bad_envelope`` (not JOSE, wrong
    algorithms or content type, a ``zip`` other than DEF, a ``kid`` this side holds no key
    for, does not decrypt, does not inflate within the cap) or ``bad_signature``.
    """
    if len(token) > MAX_ENVELOPE_BYTES:
        raise EnvelopeError("oversize", f"envelope larger than {MAX_ENVELOPE_BYTES} bytes")
    if not token.isascii():
        raise EnvelopeError("bad_envelope", "envelope is not ASCII")
    # bytes all the way: joserfc works on bytes, and each copy of a ~120 KB token costs
    data = token.encode("ascii") if isinstance(token, str) else token
    header = peek_header(data)
    if (header.get("alg"), header.get("enc"), header.get("cty")) != (JWE_ALG, JWE_ENC, "JOSE"):
        raise EnvelopeError("bad_envelope", "unexpected JWE algorithms or content type")
    if "zip" in header and header["zip"] != ZIP_DEF:
        raise EnvelopeError("bad_envelope", "unsupported JWE compression (only zip DEF)")
    kid = header.get("kid")
    key = private_keys_by_kid.get(kid) if isinstance(kid, str) else None
    if key is None or not isinstance(kid, str):
        raise EnvelopeError("bad_envelope", "envelope is for a key this clinic does not hold")
    try:
        inner = jwe.decrypt_compact(data, ECKey.import_key(key), registry=_JWE).plaintext
    except (JoseError, ValueError, KeyError, TypeError, RecursionError) as exc:
        # joserfc raises KeyError/TypeError for an ``epk`` with an unknown curve or shape
        # (found by fuzzing): hostile input, not a bug of ours
        raise EnvelopeError("bad_envelope", "envelope does not decrypt") from exc
    if inner is None:
        raise EnvelopeError("bad_envelope", "envelope has no content")
    return _verify_inner(inner, kid)


def _verify_inner(inner: bytes, kid: str) -> Opened:
    parts = inner.split(b".")
    if len(parts) != 3 or len(parts[0]) > MAX_HEADER_BYTES:
        raise EnvelopeError("bad_signature", "inner content is not a compact JWS")
    try:
        header = _b64url_json(parts[0].decode("ascii"))
        x5c = header.get("x5c")
        if header.get("alg") != JWS_ALG or not isinstance(x5c, list) or not x5c:
            raise EnvelopeError("bad_signature", "JWS is not ES256 with an x5c chain")
        certs = [x509.load_der_x509_certificate(base64.b64decode(c, validate=True)) for c in x5c]
    except EnvelopeError:
        raise
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError, RecursionError) as exc:
        raise EnvelopeError("bad_signature", "unreadable JWS header or x5c") from exc
    leaf_key = certs[0].public_key()
    if not isinstance(leaf_key, ec.EllipticCurvePublicKey):
        raise EnvelopeError("bad_signature", "signer certificate is not an EC key")
    try:
        signed = jws.deserialize_compact(inner, ECKey.import_key(leaf_key), registry=_JWS)
    except (JoseError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise EnvelopeError("bad_signature", "signature does not verify") from exc
    return Opened(dict(signed.protected), signed.payload, certs[0], certs[1:], kid)


def verify_signer(
    opened: Opened, trust_anchors: Sequence[x509.Certificate], now: dt.datetime
) -> str:
    """Check x5c chains to one of ``trust_anchors``, is valid at ``now`` and is a client
    certificate; return its CN (the hub id). EnvelopeError ``bad_signature`` otherwise: a
    signature by a key nobody vouches for is as good as none."""
    try:
        verifier = (
            verification.PolicyBuilder()
            .store(verification.Store(list(trust_anchors)))
            .time(now)
            .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY)
            .build_client_verifier()
        )
        verifier.verify(opened.leaf, opened.chain)
    except (verification.VerificationError, ValueError) as exc:
        raise EnvelopeError(
            "bad_signature", "signer certificate does not chain to the hub CA or is not valid"
        ) from exc
    cns = opened.leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    cn = cns[0].value if cns else None
    if not isinstance(cn, str) or not cn:
        raise EnvelopeError("bad_signature", "signer certificate has no CN")
    return cn
