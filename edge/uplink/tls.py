"""The uplink's TLS: an ``ssl.SSLContext`` built from config, the TCP + TLS connection with
the SPKI pin check before any MQTT byte is sent, and the translation of ssl errors into
stable reasons (``hostname_mismatch``, ``certificate_expired`` …).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from edge.config import UplinkConfig
from edge.errors import KeyUnavailable, TlsVerificationError, UplinkUnavailable
from edge.uplink.pins import PinCheck, PinVerifier

#: on TLS 1.2 only forward-secret AEAD suites (TLS 1.3 suites are all AEAD)
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

# OpenSSL X509_V_ERR_* codes seen in SSLCertVerificationError.verify_code
_VERIFY_REASONS = {
    9: "certificate_not_yet_valid",
    10: "certificate_expired",
    62: "hostname_mismatch",
    64: "hostname_mismatch",  # IP address mismatch
    2: "unknown_ca",
    7: "unknown_ca",  # signature failure: not signed by the CA we trust
    18: "unknown_ca",
    19: "unknown_ca",
    20: "unknown_ca",
    21: "unknown_ca",
}

# OpenSSL reason strings in SSLError.reason, as seen from the client
_VERSION_REASONS = frozenset(
    {
        "TLSV1_ALERT_PROTOCOL_VERSION",
        "UNSUPPORTED_PROTOCOL",
        "WRONG_VERSION_NUMBER",
        "NO_PROTOCOLS_AVAILABLE",
        "VERSION_TOO_LOW",
    }
)
# Alerts from the broker refusing our certificate
_CLIENT_CERT_REASONS = frozenset(
    {
        "TLSV1_ALERT_UNKNOWN_CA",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "TLSV1_ALERT_ACCESS_DENIED",
        "TLSV1_ALERT_DECRYPT_ERROR",
    }
)

#: every reason word a TlsVerificationError from this module can carry, with the operator's fix
REASON_HELP: Mapping[str, str] = {
    "pin_mismatch": "the broker's public key matches no uplink.pins entry — if the broker "
    "certificate was renewed on purpose, add its pin (edge pki pin CERT); otherwise "
    "someone may be impersonating the broker",
    "hostname_mismatch": "the broker certificate is not valid for uplink.host — connect by "
    "the name in its certificate or reissue it",
    "certificate_expired": "the broker certificate has expired — renew it",
    "certificate_not_yet_valid": "the broker certificate is not yet valid — check the "
    "hub's clock and the certificate dates",
    "unknown_ca": "the broker certificate was not issued by uplink.ca_file — configure the "
    "right CA or reissue the broker certificate",
    "certificate_invalid": "the broker certificate was refused (wrong key usage, bad "
    "extensions or signature) — reissue it as a TLS server certificate from the private CA",
    "tls_version": "the broker does not offer TLS at or above uplink.tls_min_version — "
    "upgrade the broker",
    "client_certificate_refused": "the broker refused the hub's client certificate — "
    "check that the broker trusts its CA and the certificate is valid",
    "not_authorised": "the broker refused the hub (authentication or ACL) — check the broker "
    "ACL grants write on <topic_prefix>/<hub id>/#",
    "tls_error": "the TLS handshake failed — see the log for the OpenSSL reason",
    "unreachable": "the broker cannot be reached — check uplink.host, uplink.port and the "
    "network",
}


# --- the context -------------------------------------------------------------------------------


def client_key_path(cfg: UplinkConfig, environ: Mapping[str, str]) -> Path:
    if cfg.client_key_credential:
        creds = environ.get("CREDENTIALS_DIRECTORY")
        if not creds:
            raise KeyUnavailable(
                "uplink.client_key_credential is set but $CREDENTIALS_DIRECTORY is not — "
                "fix: run under systemd with LoadCredential= or set uplink.client_key"
            )
        path = Path(creds) / cfg.client_key_credential
        if not path.is_file():
            raise KeyUnavailable(
                f"systemd credential {cfg.client_key_credential!r} not found — fix: add "
                "LoadCredentialEncrypted= for it to the unit"
            )
        return path
    if cfg.client_key is None:
        raise KeyUnavailable(
            "no uplink client key configured — fix: set uplink.client_key or "
            "uplink.client_key_credential"
        )
    return cfg.client_key


def key_passphrase(cfg: UplinkConfig) -> bytes | None:
    if cfg.client_key_passphrase_file is None:
        return None
    try:
        return cfg.client_key_passphrase_file.read_bytes().rstrip(b"\r\n")
    except OSError as exc:
        raise KeyUnavailable(
            "uplink.client_key_passphrase_file cannot be read — fix: check its path and "
            "permissions"
        ) from exc


def build_context(
    cfg: UplinkConfig, *, environ: Mapping[str, str] | None = None
) -> ssl.SSLContext:
    """The client context: the configured CA only, hostname check, client certificate,
    ``tls_min_version`` floor, AEAD-only on 1.2, no compression, no renegotiation."""
    env = os.environ if environ is None else environ
    # PROTOCOL_TLS_CLIENT: CERT_REQUIRED + check_hostname, and no default trust store loaded.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    ctx.minimum_version = _VERSIONS[cfg.tls_min_version]
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    try:
        ctx.load_verify_locations(cafile=str(cfg.ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise KeyUnavailable(
            "uplink.ca_file cannot be loaded — fix: point it at the private CA's PEM "
            "certificate"
        ) from exc
    key_path = client_key_path(cfg, env)
    password = key_passphrase(cfg)
    try:
        ctx.load_cert_chain(str(cfg.client_cert), str(key_path), password=password or None)
    except (OSError, ssl.SSLError) as exc:
        raise KeyUnavailable(
            "the uplink client certificate and key cannot be loaded — fix: check "
            "uplink.client_cert, the key, that they belong together, and the passphrase"
        ) from exc
    except TypeError as exc:  # an encrypted key without a passphrase
        raise KeyUnavailable(
            "the uplink client key is encrypted — fix: set uplink.client_key_passphrase_file"
        ) from exc
    return ctx


def client_cert_not_after(cfg: UplinkConfig) -> dt.datetime:
    """When the hub's client certificate expires (UTC)."""
    cert = x509.load_pem_x509_certificate(cfg.client_cert.read_bytes())
    return cert.not_valid_after_utc


def days_left(not_after: dt.datetime, now: dt.datetime) -> float:
    """Days from ``now`` until ``not_after`` (negative when expired), rounded to 0.1."""
    return round((not_after - now).total_seconds() / 86400.0, 1)


# --- error translation -------------------------------------------------------------------------


def classify_ssl_error(exc: BaseException) -> TlsVerificationError | UplinkUnavailable:
    """Translate an exception from connect / handshake / first read into an edge error."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = getattr(exc, "verify_code", None)
        reason = _VERIFY_REASONS.get(code if isinstance(code, int) else -1, "certificate_invalid")
        return TlsVerificationError(reason, f"broker certificate refused: {reason}")
    if isinstance(exc, ssl.SSLError):
        r = str(getattr(exc, "reason", "") or "")
        if r in _VERSION_REASONS:
            return TlsVerificationError("tls_version", "broker offers no acceptable TLS version")
        if r in _CLIENT_CERT_REASONS:
            return TlsVerificationError(
                "client_certificate_refused", "broker refused the client certificate"
            )
        if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            return UplinkUnavailable("broker closed the TLS connection")
        return TlsVerificationError("tls_error", f"TLS failure ({r or type(exc).__name__})")
    if isinstance(exc, TimeoutError | socket.timeout):
        return UplinkUnavailable("broker connection timed out")
    if isinstance(exc, OSError):
        err = UplinkUnavailable(f"broker unreachable ({exc.strerror or type(exc).__name__})")
        return err
    return UplinkUnavailable(f"connection failed ({type(exc).__name__})")


def failure_reason(exc: BaseException) -> str:
    """The stable reason word for an error from :func:`open_tls` / the MQTT connect."""
    if isinstance(exc, TlsVerificationError):
        return exc.reason
    return "unreachable"


# --- the connection ----------------------------------------------------------------------------


@dataclass
class TlsSession:
    """A verified, pinned TLS connection ready for MQTT."""

    sock: ssl.SSLSocket
    version: str
    cipher: str
    pin: PinCheck


def _connect_blocking(
    host: str, port: int, ctx: ssl.SSLContext, timeout: float
) -> ssl.SSLSocket:
    raw = socket.create_connection((host, port), timeout=timeout)
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tls = ctx.wrap_socket(raw, server_hostname=host, do_handshake_on_connect=False)
        tls.settimeout(timeout)
        tls.do_handshake()
        return tls
    except BaseException:
        raw.close()
        raise


def _close_result(fut: asyncio.Future[ssl.SSLSocket]) -> None:
    if not fut.cancelled() and fut.exception() is None:
        fut.result().close()


async def open_tls(
    host: str,
    port: int,
    ctx: ssl.SSLContext,
    verifier: PinVerifier,
    *,
    connect_timeout: float = 10.0,
) -> TlsSession:
    """Connect, handshake and check the pins; nothing is written after the handshake.

    The blocking connect + handshake runs in a worker thread so the event loop never blocks.
    Raises :class:`PinMismatch`, :class:`TlsVerificationError` or :class:`UplinkUnavailable`.
    The returned socket is non-blocking.
    """
    loop = asyncio.get_running_loop()
    fut = loop.run_in_executor(None, _connect_blocking, host, port, ctx, connect_timeout)
    try:
        sock = await asyncio.shield(fut)
    except asyncio.CancelledError:
        # The worker finishes on its own; make sure its socket does not leak.
        fut.add_done_callback(_close_result)
        raise
    except Exception as exc:
        raise classify_ssl_error(exc) from exc
    try:
        der = sock.getpeercert(binary_form=True)
        if not der:
            raise TlsVerificationError("tls_error", "broker presented no certificate")
        pin = verifier.check(der)
        cipher = sock.cipher()
        session = TlsSession(
            sock=sock,
            version=sock.version() or "?",
            cipher=cipher[0] if cipher else "?",
            pin=pin,
        )
        sock.setblocking(False)
        return session
    except BaseException:
        sock.close()
        raise
