"""The e2e envelope: JWE(ECDH-ES+A256KW, A256GCM) of JWS(ES256, x5c), opened here and by an
independent JOSE implementation (jwcrypto; production uses joserfc)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwcrypto import jwe as jwc_jwe
from jwcrypto import jwk as jwc_jwk
from jwcrypto import jws as jwc_jws

from edge.uplink import envelope
from edge.uplink.envelope import EnvelopeError, open_envelope, seal, thumbprint, verify_signer
from edge.uplink.pki import Issued, issue, make_ca

BUNDLE = b'{"resourceType":"Bundle","type":"transaction","entry":[]}'
NOW = dt.datetime.now(dt.UTC)


def der(issued: Issued) -> bytes:
    return issued.cert.public_bytes(serialization.Encoding.DER)


def sealed(hub: Issued, clinic: ec.EllipticCurvePrivateKey, payload: bytes = BUNDLE) -> str:
    return seal(payload, signing_key=hub.key, cert_chain_der=[der(hub)],
                recipient=clinic.public_key())


def b64url_json(part: str) -> dict[str, object]:
    doc: dict[str, object] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return doc


def test_kid_is_the_rfc7638_thumbprint_computed_by_hand(clinic: ec.EllipticCurvePrivateKey) -> None:
    nums = clinic.public_key().public_numbers()

    def b64(n: int) -> str:
        return base64.urlsafe_b64encode(n.to_bytes(32, "big")).rstrip(b"=").decode()

    canonical = f'{{"crv":"P-256","kty":"EC","x":"{b64(nums.x)}","y":"{b64(nums.y)}"}}'
    expected = base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest())
    assert thumbprint(clinic.public_key()) == expected.rstrip(b"=").decode()
    assert thumbprint(clinic) == thumbprint(clinic.public_key())


def test_headers_are_exactly_as_specified(
    hub: Issued, clinic: ec.EllipticCurvePrivateKey
) -> None:
    token = sealed(hub, clinic)
    parts = token.split(".")
    assert len(parts) == 5
    header = b64url_json(parts[0])
    assert header["alg"] == "ECDH-ES+A256KW"
    assert header["enc"] == "A256GCM"
    assert header["cty"] == "JOSE"
    assert header["kid"] == thumbprint(clinic.public_key())
    epk = header["epk"]
    assert isinstance(epk, dict) and epk["crv"] == "P-256" and "d" not in epk
    # a fresh ephemeral key per message
    assert b64url_json(sealed(hub, clinic).split(".")[0])["epk"] != epk
    assert BUNDLE not in token.encode()


def test_other_implementation_opens_and_verifies(
    hub: Issued, clinic: ec.EllipticCurvePrivateKey
) -> None:
    token = sealed(hub, clinic)
    key = jwc_jwk.JWK.from_pem(
        clinic.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    )
    outer = jwc_jwe.JWE()
    outer.deserialize(token, key=key)
    inner = jwc_jws.JWS()
    inner.deserialize(outer.payload.decode())
    header = inner.jose_header
    assert header["alg"] == "ES256"
    # x5c is plain base64 (not base64url) DER, leaf first
    assert base64.b64decode(header["x5c"][0], validate=True) == der(hub)
    signer = jwc_jwk.JWK.from_pem(hub.cert.public_bytes(serialization.Encoding.PEM))
    inner.verify(signer, alg="ES256")
    assert inner.payload == BUNDLE
    # ES256 signatures are the raw 64-byte r||s, not DER
    sig = inner.objects["signature"]
    assert len(sig) == 64


def test_opens_what_the_other_implementation_sealed(
    hub: Issued, ca: Issued, clinic: ec.EllipticCurvePrivateKey
) -> None:
    hub_jwk = jwc_jwk.JWK.from_pem(
        hub.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    )
    signed = jwc_jws.JWS(BUNDLE)
    x5c = [base64.b64encode(der(hub)).decode()]
    signed.add_signature(hub_jwk, None, json.dumps({"alg": "ES256", "x5c": x5c}))
    rcpt = jwc_jwk.JWK.from_pem(
        clinic.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    kid = thumbprint(clinic.public_key())
    assert rcpt.thumbprint() == kid
    outer = jwc_jwe.JWE(
        signed.serialize(compact=True).encode(),
        json.dumps({"alg": "ECDH-ES+A256KW", "enc": "A256GCM", "kid": kid, "cty": "JOSE"}),
    )
    outer.add_recipient(rcpt)
    opened = open_envelope(outer.serialize(compact=True), {kid: clinic})
    assert opened.payload == BUNDLE
    assert verify_signer(opened, [ca.cert], NOW) == "hub-1"


def test_retired_key_still_opens_by_kid(hub: Issued, ca: Issued) -> None:
    old, new = (ec.generate_private_key(ec.SECP256R1()) for _ in range(2))
    keys = {thumbprint(old): old, thumbprint(new): new}
    for k in (old, new):
        assert open_envelope(sealed(hub, k), keys).kid == thumbprint(k)


def test_wrong_recipient_is_bad_envelope(hub: Issued, clinic: ec.EllipticCurvePrivateKey) -> None:
    stranger = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(EnvelopeError) as err:
        open_envelope(sealed(hub, stranger), {thumbprint(clinic): clinic})
    assert err.value.reason == "bad_envelope"


def test_kid_lying_about_the_key_is_bad_envelope(
    hub: Issued, clinic: ec.EllipticCurvePrivateKey
) -> None:
    stranger = ec.generate_private_key(ec.SECP256R1())
    # encrypted to the stranger, but claims the clinic's kid
    token = sealed(hub, stranger)
    with pytest.raises(EnvelopeError) as err:
        open_envelope(token, {thumbprint(stranger): clinic})
    assert err.value.reason == "bad_envelope"


@pytest.mark.parametrize(
    "garbage", [b"", b"hello", b"a.b.c.d.e", b"\xff\xfe" * 10, b"{}", b"....."]
)
def test_garbage_is_bad_envelope(garbage: bytes, clinic: ec.EllipticCurvePrivateKey) -> None:
    with pytest.raises(EnvelopeError) as err:
        open_envelope(garbage, {thumbprint(clinic): clinic})
    assert err.value.reason == "bad_envelope"


def test_oversize_is_refused_before_parsing(clinic: ec.EllipticCurvePrivateKey) -> None:
    with pytest.raises(EnvelopeError) as err:
        open_envelope(b"x" * (envelope.MAX_ENVELOPE_BYTES + 1), {thumbprint(clinic): clinic})
    assert err.value.reason == "oversize"


def test_a_large_bundle_fits(hub: Issued, clinic: ec.EllipticCurvePrivateKey) -> None:
    big = b'{"pad":"' + b"a" * 262_000 + b'"}'
    opened = open_envelope(sealed(hub, clinic, big), {thumbprint(clinic): clinic})
    assert opened.payload == big


def test_tampered_ciphertext_is_bad_envelope(
    hub: Issued, clinic: ec.EllipticCurvePrivateKey
) -> None:
    parts = sealed(hub, clinic).split(".")
    ct = bytearray(base64.urlsafe_b64decode(parts[3] + "=" * (-len(parts[3]) % 4)))
    ct[0] ^= 1
    parts[3] = base64.urlsafe_b64encode(bytes(ct)).rstrip(b"=").decode()
    with pytest.raises(EnvelopeError) as err:
        open_envelope(".".join(parts), {thumbprint(clinic): clinic})
    assert err.value.reason == "bad_envelope"


def test_signature_by_another_key_than_x5c_is_bad_signature(
    hub: Issued, ca: Issued, clinic: ec.EllipticCurvePrivateKey
) -> None:
    impostor = ec.generate_private_key(ec.SECP256R1())
    token = seal(BUNDLE, signing_key=impostor, cert_chain_der=[der(hub)],
                 recipient=clinic.public_key())
    with pytest.raises(EnvelopeError) as err:
        open_envelope(token, {thumbprint(clinic): clinic})
    assert err.value.reason == "bad_signature"


def test_certificate_from_another_ca_is_bad_signature(
    ca: Issued, clinic: ec.EllipticCurvePrivateKey
) -> None:
    rogue = issue(make_ca("rogue CA"), "hub-1")
    opened = open_envelope(sealed(rogue, clinic), {thumbprint(clinic): clinic})
    with pytest.raises(EnvelopeError) as err:
        verify_signer(opened, [ca.cert], NOW)
    assert err.value.reason == "bad_signature"


def test_expired_certificate_is_bad_signature(
    ca: Issued, hub: Issued, clinic: ec.EllipticCurvePrivateKey
) -> None:
    opened = open_envelope(sealed(hub, clinic), {thumbprint(clinic): clinic})
    assert verify_signer(opened, [ca.cert], NOW) == "hub-1"
    with pytest.raises(EnvelopeError):
        verify_signer(opened, [ca.cert], NOW + dt.timedelta(days=3000))


def test_server_certificate_is_not_a_hub(ca: Issued, clinic: ec.EllipticCurvePrivateKey) -> None:
    server = issue(ca, "hub-1", server=True, dns=["hub-1"])
    opened = open_envelope(sealed(server, clinic), {thumbprint(clinic): clinic})
    with pytest.raises(EnvelopeError):
        verify_signer(opened, [ca.cert], NOW)


def test_seal_refuses_other_curves(hub: Issued) -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(ValueError, match="P-256"):
        seal(BUNDLE, signing_key=hub.key, cert_chain_der=[der(hub)],
             recipient=p384.public_key())
