"""The clinic's side of the end-to-end envelope: :func:`open_envelope` (and, when it opens,
:func:`verify_signer`) on arbitrary tokens and on half-valid ones — a real header with fuzzed
fields, a real token with bytes changed, a real JWE around a fuzzed inner JWS. Only
:class:`EnvelopeError` may escape. A payload sealed by the hub must open to itself.

So that a crashing input reproduces in another process, the keys are fixed (derived from
constant labels: fuzzing keys, never used anywhere else) and the valid token every mutation
starts from is the one kept in ``envelope_token.txt`` (``python -m fuzz.targets.envelope``
writes a new one; its hub certificate is valid until 2100).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jwe
from joserfc.jwk import ECKey

from edge.uplink.envelope import (
    JWE_ALG,
    JWE_ENC,
    MAX_ENVELOPE_BYTES,
    MAX_HEADER_BYTES,
    EnvelopeError,
    open_envelope,
    seal,
    thumbprint,
    verify_signer,
)
from edge.uplink.pki import issue, make_ca
from fuzz.data import Data

#: the order of P-256
_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_TOKEN_FILE = Path(__file__).with_name("envelope_token.txt")


def _fixed_key(label: str) -> ec.EllipticCurvePrivateKey:
    scalar = int.from_bytes(hashlib.sha256(f"edge fuzz {label}".encode()).digest(), "big")
    return ec.derive_private_key(scalar % (_N - 1) + 1, ec.SECP256R1())


_CA = make_ca("edge fuzz CA", key=_fixed_key("ca"))
_HUB = issue(_CA, "hub-1", key=_fixed_key("hub"),
             not_after=dt.datetime(2100, 1, 1, tzinfo=dt.UTC))
_HUB_DER = _HUB.cert.public_bytes(serialization.Encoding.DER)
_CLINIC = _fixed_key("clinic")
_KID = thumbprint(_CLINIC)
_KEYS = {_KID: _CLINIC}
_RKEY = ECKey.import_key(_CLINIC.public_key())
_NOW = dt.datetime.now(dt.UTC)
_REGISTRY = jwe.JWERegistry(algorithms=[JWE_ALG, JWE_ENC])
_REGISTRY.max_protected_header_length = MAX_HEADER_BYTES
_REGISTRY.max_ciphertext_length = MAX_ENVELOPE_BYTES


def _seal(payload: bytes) -> str:
    return seal(payload, signing_key=_HUB.key, cert_chain_der=[_HUB_DER],
                recipient=_CLINIC.public_key())


_BUNDLE = b'{"resourceType":"Bundle","type":"transaction","entry":[]}'
VALID = (_TOKEN_FILE.read_text().strip() if _TOKEN_FILE.is_file() else "") or _seal(_BUNDLE)
VALID_PARTS = VALID.split(".")
VALID_HEADER = json.loads(base64.urlsafe_b64decode(VALID_PARTS[0] + "=="))
_X5C = base64.b64encode(_HUB_DER).decode()


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _value(d: Data, valid: object) -> object:
    """A header value: the valid one most often, else something else of the fuzzer's."""
    kind = d.u8() % 8
    if kind < 3:
        return valid
    if kind == 3:
        return d.text(40)
    if kind == 4:
        return d.sint(8)
    if kind == 5:
        return [valid, d.text(8)]
    if kind == 6:
        return {"x": d.text(8)}
    return None


def _header(d: Data, template: dict[str, object]) -> bytes:
    if d.flag():  # the fuzzer's own JSON (or not JSON at all)
        return d.take(d.u16() % (MAX_HEADER_BYTES + 64))
    header = {k: _value(d, v) for k, v in template.items()}
    for _ in range(d.u8() % 3):
        header[d.text(12)] = _value(d, d.text(12))
    return json.dumps(header).encode()


def _outer_fields(d: Data) -> str:
    header = _header(d, VALID_HEADER)
    parts = [_b64url(header)]
    for i in range(1, 5):
        parts.append(VALID_PARTS[i] if d.flag() else _b64url(d.sized(64)))
    return ".".join(parts)


def _mutated(d: Data) -> str:
    token = bytearray(VALID.encode())
    for _ in range(1 + d.u8() % 4):
        pos = d.u16() % (len(token) + 1)
        op = d.u8() % 3
        if op == 0 and pos < len(token):
            token[pos] = d.u8()
        elif op == 1:
            del token[pos : pos + 1 + d.u8()]
        else:
            token[pos:pos] = d.sized(32)
    return token.decode("latin-1")


def _inner(d: Data) -> bytes:
    """An inner JWS of the fuzzer's making (or any bytes at all)."""
    if d.flag():
        return d.rest()
    header = _header(d, {"alg": "ES256", "x5c": [_X5C]})
    payload = d.sized(64)
    signature = d.sized(80)
    return b".".join(_b64url(p).encode() for p in (header, payload, signature))


def _encrypted(d: Data) -> str:
    protected = {"alg": JWE_ALG, "enc": JWE_ENC, "kid": _KID, "cty": "JOSE"}
    return jwe.encrypt_compact(protected, _inner(d), _RKEY, registry=_REGISTRY)


def _open(token: str | bytes) -> None:
    try:
        opened = open_envelope(token, _KEYS)
        verify_signer(opened, [_CA.cert], _NOW)
    except EnvelopeError:
        return


def envelope(data: bytes) -> None:
    d = Data(data)
    mode = d.u8() % 6
    if mode == 0:
        _open(d.rest())
    elif mode == 1:
        _open(d.rest().decode("latin-1"))
    elif mode == 2:
        _open(_outer_fields(d))
    elif mode == 3:
        _open(_mutated(d))
    elif mode == 4:
        _open(_encrypted(d))
    else:
        payload = d.rest()
        token = _seal(payload)
        opened = open_envelope(token.encode(), _KEYS)
        assert opened.payload == payload and opened.kid == _KID
        assert verify_signer(opened, [_CA.cert], _NOW) == "hub-1"


if __name__ == "__main__":
    _TOKEN_FILE.write_text(_seal(_BUNDLE) + "\n")
    print(f"wrote {_TOKEN_FILE}")
