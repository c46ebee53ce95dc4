"""The ingest path's envelope checks: edge's joserfc opener on hostile JOSE headers, and the
signer cache (clinic.ingest.signers), which never trusts a chain longer than a fresh check would
and never spares the signature check."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_wrap

from clinic.ingest.signers import SignerCache
from edge.uplink import envelope as edge_env
from edge.uplink.pki import issue, make_ca
from fuzz.targets import envelope as target

KEYS = {target._KID: target._CLINIC}
NOW = target._NOW

Outcome = tuple[str, bytes | str]


def clinic_outcome(token: bytes, signers: SignerCache | None = None) -> Outcome:
    """What the ingest path makes of ``token``: the signer's CN, or the rejection reason."""
    signers = signers or SignerCache([target._CA.cert])
    try:
        opened = edge_env.open_envelope(token, KEYS)
        return "ok", signers.hub_of(opened, NOW)
    except edge_env.EnvelopeError as exc:
        return "rejected", exc.reason


def _b64(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


def _inner(header: dict[str, object] | None = None, payload: bytes = b'{"a":1}') -> bytes:
    """A compact ES256 JWS by the fuzz hub with any header (joserfc would refuse to write
    some of these)."""
    h = header or {"alg": "ES256", "x5c": [target._X5C]}
    signing_input = _b64(json.dumps(h).encode()) + b"." + _b64(payload)
    r, s = decode_dss_signature(target._HUB.key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    return signing_input + b"." + _b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def _wrap(inner: bytes, **extra: object) -> bytes:
    """A compact ECDH-ES+A256KW / A256GCM JWE to the fuzz clinic key with any extra header
    members (RFC 7518 §4.6, written out here; edge's joserfc is the judge of it)."""
    eph = ec.generate_private_key(ec.SECP256R1())
    nums = eph.public_key().public_numbers()
    header = {"alg": edge_env.JWE_ALG, "enc": edge_env.JWE_ENC, "kid": target._KID,
              "cty": "JOSE", "epk": {"kty": "EC", "crv": "P-256",
                                     "x": _b64(nums.x.to_bytes(32, "big")).decode(),
                                     "y": _b64(nums.y.to_bytes(32, "big")).decode()}, **extra}
    z = eph.exchange(ec.ECDH(), target._CLINIC.public_key())
    info = [edge_env.JWE_ALG.encode()] + [
        base64.urlsafe_b64decode(str(extra.get(k, "")) + "==") for k in ("apu", "apv")]
    kek = hashlib.sha256(b"\0\0\0\1" + z + b"".join(
        len(i).to_bytes(4, "big") + i for i in info) + (256).to_bytes(4, "big")).digest()
    cek, iv = os.urandom(32), os.urandom(12)
    protected = _b64(json.dumps(header).encode())
    sealed = AESGCM(cek).encrypt(iv, inner, protected)
    return b".".join([protected, _b64(aes_key_wrap(kek, cek)), _b64(iv), _b64(sealed[:-16]),
                      _b64(sealed[-16:])])


@pytest.mark.parametrize(("token", "expected"), [
    (_wrap(_inner()), ("ok", "hub-1")),
    # Concat KDF party info is honoured, as joserfc honours it
    (_wrap(_inner(), apu="QWxpY2U", apv="Qm9i"), ("ok", "hub-1")),
    (_wrap(_inner(), crit=["kid"]), ("ok", "hub-1")),
    (_wrap(_inner(), crit=["nope"]), ("rejected", "bad_envelope")),
    (_wrap(_inner(), crit=["epk"]), ("rejected", "bad_envelope")),
    (_wrap(_inner(), zip="DEF"), ("rejected", "bad_envelope")),
    (_wrap(_inner(), extra="x"), ("rejected", "bad_envelope")),
    (_wrap(_inner(), typ=7), ("rejected", "bad_envelope")),
    (_wrap(_inner(), typ="JOSE"), ("ok", "hub-1")),
    (_wrap(_inner({"alg": "ES384", "x5c": [target._X5C]})), ("rejected", "bad_signature")),
    (_wrap(_inner({"alg": "ES256", "x5c": []})), ("rejected", "bad_signature")),
    (_wrap(_inner({"alg": "ES256", "x5c": [target._X5C], "b64": True})), ("ok", "hub-1")),
    (_wrap(_inner({"alg": "ES256", "x5c": [target._X5C], "kid": 1})),
     ("rejected", "bad_signature")),
    (_wrap(_inner({"alg": "ES256", "x5c": [target._X5C], "zzz": 1})),
     ("rejected", "bad_signature")),
    (_wrap(_inner({"alg": "ES256", "x5c": [target._X5C], "crit": ["x5c"]})), ("ok", "hub-1")),
])
def test_hostile_header_members_are_judged_by_the_allow_lists(
        token: bytes, expected: tuple[str, str]) -> None:
    assert clinic_outcome(token) == expected


def test_a_cached_chain_never_spares_the_signature_check() -> None:
    signers = SignerCache([target._CA.cert])
    good = _wrap(_inner(payload=b'{"n":1}'))
    assert clinic_outcome(good, signers)[0] == "ok"
    # same x5c (so a cache hit), a payload the hub did not sign
    h, _, sig = _inner(payload=b'{"n":1}').split(b".")
    forged = h + b"." + base64.urlsafe_b64encode(b'{"n":2}').rstrip(b"=") + b"." + sig
    assert clinic_outcome(_wrap(forged), signers) == ("rejected", "bad_signature")


def _chain(ca_days: int, leaf_not_after: dt.datetime) -> tuple[SignerCache, bytes]:
    ca = make_ca("cache CA", days=ca_days)
    hub = issue(ca, "hub-9", not_after=leaf_not_after)
    der = hub.cert.public_bytes(serialization.Encoding.DER)
    token = edge_env.seal(b"{}", signing_key=hub.key, cert_chain_der=[der],
                          recipient=target._CLINIC.public_key()).encode()
    return SignerCache([ca.cert]), token


@pytest.mark.parametrize("which", ["leaf", "ca"])
def test_a_cached_chain_is_trusted_only_while_every_certificate_is_valid(which: str) -> None:
    if which == "leaf":  # the hub's certificate ends in two days, its CA in ten years
        signers, token = _chain(3650, NOW + dt.timedelta(days=2))
    else:  # the CA ends in two days, the hub's certificate later
        signers, token = _chain(2, NOW + dt.timedelta(days=400))
    opened = edge_env.open_envelope(token, KEYS)
    assert signers.hub_of(opened, NOW) == "hub-9"
    assert signers.hub_of(opened, NOW + dt.timedelta(days=1)) == "hub-9"  # from the cache
    with pytest.raises(edge_env.EnvelopeError) as err:
        signers.hub_of(opened, NOW + dt.timedelta(days=3))
    assert err.value.reason == "bad_signature"


def test_a_chain_from_another_ca_is_not_trusted_because_a_good_one_was() -> None:
    signers = SignerCache([target._CA.cert])
    assert clinic_outcome(_wrap(_inner()), signers)[0] == "ok"
    rogue = issue(make_ca("rogue"), "hub-1")
    der = rogue.cert.public_bytes(serialization.Encoding.DER)
    token = edge_env.seal(b"{}", signing_key=rogue.key, cert_chain_der=[der],
                          recipient=target._CLINIC.public_key()).encode()
    assert clinic_outcome(token, signers) == ("rejected", "bad_signature")


