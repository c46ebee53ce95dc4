"""TLS error translation: ssl errors to stable reason words (no files, no network)."""

from __future__ import annotations

import ssl

import pytest

from edge.errors import TlsVerificationError, UplinkUnavailable
from edge.uplink.tls import classify_ssl_error


def _verify_error(code: int) -> ssl.SSLCertVerificationError:
    e = ssl.SSLCertVerificationError(1, "certificate verify failed")
    e.verify_code = code
    return e


def _ssl_error(reason: str) -> ssl.SSLError:
    e = ssl.SSLError(1, reason)
    e.reason = reason
    return e


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (_verify_error(10), "certificate_expired"),
        (_verify_error(62), "hostname_mismatch"),
        (_verify_error(64), "hostname_mismatch"),
        (_verify_error(20), "unknown_ca"),
        (_verify_error(19), "unknown_ca"),
        (_verify_error(26), "certificate_invalid"),  # e.g. a client-only certificate
        (_ssl_error("TLSV1_ALERT_PROTOCOL_VERSION"), "tls_version"),
        (_ssl_error("UNSUPPORTED_PROTOCOL"), "tls_version"),
        (_ssl_error("TLSV13_ALERT_CERTIFICATE_REQUIRED"), "client_certificate_refused"),
        (_ssl_error("TLSV1_ALERT_UNKNOWN_CA"), "client_certificate_refused"),
        (_ssl_error("SSLV3_ALERT_BAD_CERTIFICATE"), "client_certificate_refused"),
    ],
)
def test_ssl_errors_get_stable_reasons(exc: Exception, reason: str) -> None:
    out = classify_ssl_error(exc)
    assert isinstance(out, TlsVerificationError)
    assert out.reason == reason


def test_network_errors_are_transient() -> None:
    assert isinstance(classify_ssl_error(ConnectionRefusedError(111, "refused")), UplinkUnavailable)
    assert isinstance(classify_ssl_error(TimeoutError()), UplinkUnavailable)
