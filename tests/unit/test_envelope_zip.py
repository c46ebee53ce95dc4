"""``[e2e] compress``: the JWE carries ``zip`` DEF and its plaintext, the JWS, is raw DEFLATE
(RFC 7516 §4.1.3). The clinic opens both forms, refuses other ``zip`` values and inflates into
at most MAX_INNER_BYTES (a zip bomb is ``bad_envelope``); other JOSE libraries read it both ways.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import tracemalloc
import zlib

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jwe
from joserfc.jwa import JWEZipModel
from joserfc.jwk import ECKey
from jwcrypto import jwe as jwc_jwe
from jwcrypto import jwk as jwc_jwk
from jwcrypto import jws as jwc_jws

from edge import fhir
from edge.uplink import envelope
from edge.uplink.envelope import EnvelopeError, open_envelope, seal, thumbprint, verify_signer
from edge.uplink.pki import Issued
from tests.support.uplink_fakes import make_readings
from tests.unit.test_envelope import BUNDLE, der


@pytest.fixture(scope="module")
def bundle50() -> bytes:
    return fhir.bundle_bytes(make_readings(50), hub_id="h")


def sealed(hub: Issued, clinic: ec.EllipticCurvePrivateKey, payload: bytes = BUNDLE, *,
           compress: bool) -> str:
    return seal(payload, signing_key=hub.key, cert_chain_der=[der(hub)],
                recipient=clinic.public_key(), compress=compress)


def jwe_header(token: str) -> dict[str, object]:
    part = token.split(".")[0]
    doc: dict[str, object] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return doc


def keys_of(clinic: ec.EllipticCurvePrivateKey) -> dict[str, ec.EllipticCurvePrivateKey]:
    return {thumbprint(clinic): clinic}


def raw_deflate(data: bytes, level: int = 9) -> bytes:
    packer = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


class _AsIs(JWEZipModel):
    """A "zip" model that leaves the plaintext as it is: lets a test encrypt, to the clinic's
    key, exactly the (hostile) compressed bytes it wants under any ``zip`` name."""

    description = "test: plaintext as given"

    def __init__(self, name: str) -> None:
        self.name = name

    def compress(self, s: bytes) -> bytes:
        return s

    def decompress(self, s: bytes) -> bytes:
        return s


def _raw_registry(zip_: str) -> jwe.JWERegistry:
    reg = jwe.JWERegistry(algorithms=[envelope.JWE_ALG, envelope.JWE_ENC, zip_])
    shared = jwe.JWERegistry.algorithms
    reg.algorithms = {
        "alg": {envelope.JWE_ALG: shared["alg"][envelope.JWE_ALG]},
        "enc": {envelope.JWE_ENC: shared["enc"][envelope.JWE_ENC]},
        "zip": {zip_: _AsIs(zip_)},
    }
    reg.max_ciphertext_length = envelope.MAX_ENVELOPE_BYTES
    return reg


def decrypt_raw(clinic: ec.EllipticCurvePrivateKey, token: str) -> bytes:
    """The decrypted JWE plaintext as it is, compressed or not."""
    zip_ = jwe_header(token).get("zip", "DEF")
    assert isinstance(zip_, str)
    out = jwe.decrypt_compact(token, ECKey.import_key(clinic), registry=_raw_registry(zip_))
    assert out.plaintext is not None
    return out.plaintext


def encrypt_raw(clinic: ec.EllipticCurvePrivateKey, plaintext: bytes, zip_: str) -> str:
    """A properly encrypted JWE to the clinic key whose ciphertext holds ``plaintext`` as it
    is and whose protected header says ``zip``: ``zip_``."""
    rkey = ECKey.import_key(clinic.public_key())
    protected = {"alg": envelope.JWE_ALG, "enc": envelope.JWE_ENC, "kid": rkey.thumbprint(),
                 "cty": "JOSE", "zip": zip_}
    return jwe.encrypt_compact(protected, plaintext, rkey, registry=_raw_registry(zip_))


def reason(token: str, clinic: ec.EllipticCurvePrivateKey) -> str:
    with pytest.raises(EnvelopeError) as err:
        open_envelope(token, keys_of(clinic))
    return err.value.reason


# --- round trip ------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
def test_round_trip_with_and_without_compression(
    hub: Issued, ca: Issued, clinic: ec.EllipticCurvePrivateKey, bundle50: bytes,
    compress: bool,
) -> None:
    token = sealed(hub, clinic, bundle50, compress=compress)
    header = jwe_header(token)
    if compress:
        assert header["zip"] == "DEF"
    else:
        assert "zip" not in header
    # everything else about the header is the same in both forms
    assert {k: header[k] for k in ("alg", "enc", "cty")} == \
        {"alg": "ECDH-ES+A256KW", "enc": "A256GCM", "cty": "JOSE"}
    opened = open_envelope(token, keys_of(clinic))
    assert opened.payload == bundle50
    assert opened.jws_header["alg"] == "ES256"
    assert verify_signer(opened, [ca.cert], dt.datetime.now(dt.UTC)) == "hub-1"


def test_compressed_envelope_of_50_readings_is_much_smaller(
    hub: Issued, clinic: ec.EllipticCurvePrivateKey, bundle50: bytes
) -> None:
    plain = sealed(hub, clinic, bundle50, compress=False)
    small = sealed(hub, clinic, bundle50, compress=True)
    assert len(bundle50) > 60_000
    # measured: ~122 KB -> ~12 KB
    assert len(small) * 6 < len(plain), (len(small), len(plain))
    # the JWE plaintext really is raw DEFLATE (RFC 1951, no zlib header) of the very JWS that
    # the uncompressed form carries (same length; the ES256 signature differs each time)
    packed = decrypt_raw(clinic, small)
    with pytest.raises(zlib.error):
        zlib.decompress(packed)
    jws_compact = zlib.decompressobj(-zlib.MAX_WBITS).decompress(packed)
    assert len(jws_compact) == len(decrypt_raw(clinic, plain))
    assert open_envelope(plain, keys_of(clinic)).payload == bundle50


def test_the_hub_deflates_raw_at_the_chosen_level(bundle50: bytes) -> None:
    model = envelope._JWE.get_zip("DEF")
    packed = model.compress(bundle50)
    assert zlib.decompressobj(-zlib.MAX_WBITS).decompress(packed) == bundle50
    with pytest.raises(zlib.error):  # not zlib-wrapped (RFC 1951, not RFC 1950)
        zlib.decompress(packed)
    assert packed == raw_deflate(bundle50, envelope.DEFLATE_LEVEL)


def test_a_large_compressed_bundle_fits(hub: Issued, clinic: ec.EllipticCurvePrivateKey) -> None:
    # a 256 KiB Bundle's JWS (~350 KB) is beyond joserfc's own 250 KiB inflate cap
    big = b'{"pad":"' + bytes(range(48, 58)) * 26_200 + b'"}'
    assert len(big) > 262_000
    opened = open_envelope(sealed(hub, clinic, big, compress=True), keys_of(clinic))
    assert opened.payload == big


# --- hostile compressed envelopes ------------------------------------------------------------


def test_inflating_to_exactly_the_cap_passes_and_one_byte_more_is_bad_envelope(
    clinic: ec.EllipticCurvePrivateKey,
) -> None:
    cap = envelope.MAX_INNER_BYTES
    at_cap = encrypt_raw(clinic, raw_deflate(b"a" * cap), "DEF")
    # inflated in full, then found not to be a JWS: past the inflate step
    assert reason(at_cap, clinic) == "bad_signature"
    assert reason(encrypt_raw(clinic, raw_deflate(b"a" * (cap + 1)), "DEF"), clinic) == \
        "bad_envelope"


def test_a_zip_bomb_is_bad_envelope_without_inflating_it(
    clinic: ec.EllipticCurvePrivateKey,
) -> None:
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunk = bytes(1 << 20)
    bomb = b"".join(packer.compress(chunk) for _ in range(256)) + packer.flush()  # 256 MiB
    assert len(bomb) < 300_000
    token = encrypt_raw(clinic, bomb, "DEF")
    assert len(token) < envelope.MAX_ENVELOPE_BYTES
    tracemalloc.start()
    try:
        with pytest.raises(EnvelopeError) as err:
            open_envelope(token, keys_of(clinic))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.value.reason == "bad_envelope"
    assert "inflates beyond" in str(err.value)
    # the cap (768 KiB) plus the token's own copies, never the 256 MiB
    assert peak < 4 * envelope.MAX_INNER_BYTES, peak


@pytest.mark.parametrize("zip_", ["GZIP", "def", "", "DEF "])
def test_another_zip_value_is_bad_envelope(
    hub: Issued, clinic: ec.EllipticCurvePrivateKey, zip_: str
) -> None:
    inner = decrypt_raw(clinic, sealed(hub, clinic, compress=False))
    token = encrypt_raw(clinic, raw_deflate(inner), zip_)
    assert jwe_header(token)["zip"] == zip_
    with pytest.raises(EnvelopeError) as err:
        open_envelope(token, keys_of(clinic))
    assert err.value.reason == "bad_envelope"
    assert "compression" in str(err.value)
    # the same content under zip DEF opens: only the zip value was wrong
    assert open_envelope(encrypt_raw(clinic, raw_deflate(inner), "DEF"),
                         keys_of(clinic)).payload == BUNDLE


@pytest.mark.parametrize("mangle", ["zlib-wrapped", "truncated", "trailing bytes", "not deflate"])
def test_malformed_deflate_is_bad_envelope(
    hub: Issued, clinic: ec.EllipticCurvePrivateKey, mangle: str
) -> None:
    inner = decrypt_raw(clinic, sealed(hub, clinic, compress=False))
    packed = {
        "zlib-wrapped": zlib.compress(inner),
        "truncated": raw_deflate(inner)[:-8],
        "trailing bytes": raw_deflate(inner) + b"\x00junk",
        "not deflate": b"\xff" * 64,
    }[mangle]
    assert reason(encrypt_raw(clinic, packed, "DEF"), clinic) == "bad_envelope"


# --- interoperability ------------------------------------------------------------------------


def test_plain_joserfc_with_its_standard_deflate_opens_a_compressed_envelope(
    hub: Issued, clinic: ec.EllipticCurvePrivateKey, bundle50: bytes
) -> None:
    from joserfc._rfc7518.jwe_zips import DeflateZipModel

    # our registry's own model did not replace joserfc's shared one
    assert isinstance(jwe.JWERegistry.algorithms["zip"]["DEF"], DeflateZipModel)
    token = sealed(hub, clinic, bundle50, compress=True)
    plain_registry = jwe.JWERegistry(algorithms=["ECDH-ES+A256KW", "A256GCM", "DEF"])
    opened = jwe.decrypt_compact(token, ECKey.import_key(clinic), registry=plain_registry)
    assert opened.protected["zip"] == "DEF"
    assert opened.plaintext is not None
    inner = jwc_jws.JWS()
    inner.deserialize(opened.plaintext.decode("ascii"))
    inner.verify(jwc_jwk.JWK.from_pyca(hub.cert.public_key()), alg="ES256")
    assert inner.payload == bundle50


def test_jwcrypto_opens_a_compressed_envelope(
    hub: Issued, clinic: ec.EllipticCurvePrivateKey, bundle50: bytes
) -> None:
    token = sealed(hub, clinic, bundle50, compress=True)
    outer = jwc_jwe.JWE()
    outer.allowed_algs = ["ECDH-ES+A256KW", "A256GCM"]
    outer.deserialize(token, key=jwc_jwk.JWK.from_pyca(clinic))
    assert outer.jose_header["zip"] == "DEF"
    inner = jwc_jws.JWS()
    inner.deserialize(outer.payload.decode("ascii"))
    inner.verify(jwc_jwk.JWK.from_pyca(hub.cert.public_key()), alg="ES256")
    assert inner.payload == bundle50


def test_opens_what_joserfcs_standard_deflate_sealed(
    hub: Issued, clinic: ec.EllipticCurvePrivateKey
) -> None:
    inner = decrypt_raw(clinic, sealed(hub, clinic, compress=False))
    rkey = ECKey.import_key(clinic.public_key())
    protected = {"alg": "ECDH-ES+A256KW", "enc": "A256GCM", "kid": rkey.thumbprint(),
                 "cty": "JOSE", "zip": "DEF"}
    token = jwe.encrypt_compact(
        protected, inner, rkey,
        registry=jwe.JWERegistry(algorithms=["ECDH-ES+A256KW", "A256GCM", "DEF"]),
    )
    assert open_envelope(token, keys_of(clinic)).payload == BUNDLE
