"""One exception hierarchy, grouped by what the caller should do.

Every message is safe to show a user: no reading value, patient pseudonym, device address or
key ever goes into one. Library errors are translated at the boundary with ``raise ... from``.
"""

from __future__ import annotations


class EdgeError(Exception):
    """Base of every error edge raises on purpose."""

    exit_code: int = 1


# --- the operator must fix something (exit 2) -------------------------------------------------


class ConfigError(EdgeError):
    """The configuration is invalid or insecure. ``problems`` holds one line per problem."""

    exit_code = 2

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


class UsageError(EdgeError):
    """A command was given something it cannot use (an unknown name, a bad pseudonym …)."""

    exit_code = 2


class KeyUnavailable(EdgeError):
    """A key provider could not produce a key (missing, unreadable, insecure, or wrong key)."""

    exit_code = 2


# --- bad input: count it, refuse it, carry on --------------------------------------------------


class Rejected(EdgeError):
    """Input refused with a named, countable ``reason``."""

    reason: str = "rejected"


class MalformedPayload(Rejected):
    """A BLE payload that does not follow its characteristic's specification."""

    reason = "malformed"

    def __init__(self, characteristic: str, why: str) -> None:
        super().__init__(f"malformed {characteristic}: {why}")
        self.characteristic = characteristic
        self.why = why


class Implausible(Rejected):
    """A value outside what the device can physically report, or not patient data."""

    def __init__(self, reason: str, why: str) -> None:
        super().__init__(why)
        self.reason = reason


class VaultFull(Rejected):
    """The vault's pending limit (count or bytes) or the disk is full; nothing was stored."""

    def __init__(self, reason: str, why: str) -> None:
        super().__init__(why)
        self.reason = reason


# --- transient: retry with backoff -------------------------------------------------------------


class Transient(EdgeError):
    """A failure worth retrying later (link dropped, broker away, device busy)."""


class BleError(Transient):
    """A BLE operation failed; the supervisor reconnects with backoff."""


class UplinkUnavailable(Transient):
    """The broker cannot be reached or the connection dropped."""


class RacpError(Transient):
    """A glucose record transfer did not complete; re-synced from the cursor next time."""


# --- security: refuse, audit, back off ---------------------------------------------------------


class SecurityError(EdgeError):
    """A peer failed verification. Nothing is sent; the event is audited."""

    exit_code = 3


class TlsVerificationError(SecurityError):
    """The broker's certificate or TLS parameters were refused. ``reason`` is a stable word."""

    def __init__(self, reason: str, why: str) -> None:
        super().__init__(why)
        self.reason = reason


class PinMismatch(TlsVerificationError):
    """The broker's public key matches none of the configured SPKI pins."""

    def __init__(self, presented_pin: str) -> None:
        super().__init__("pin_mismatch", "broker public key matches no configured pin")
        self.presented_pin = presented_pin


class PairingRefused(SecurityError):
    """A device refused to bond, or does not offer the expected service."""


# --- the vault itself --------------------------------------------------------------------------


class VaultError(EdgeError):
    """The encrypted store could not do what was asked."""

    exit_code = 2


class VaultCorrupt(VaultError):
    """Integrity checks failed; stop and investigate rather than write more."""


class AuditChainBroken(VaultError):
    """The audit hash chain does not verify."""

    exit_code = 1


# --- the control socket ------------------------------------------------------------------------


class ControlError(EdgeError):
    """A control request failed. The message is safe to show; ``code`` is a stable word
    (``bad_request``, ``busy``, ``timeout`` …) sent back over the socket."""

    def __init__(self, message: str, code: str = "error") -> None:
        super().__init__(message)
        self.code = code


class DaemonNotRunning(ControlError):
    """Nothing listens on the control socket."""

    def __init__(self) -> None:
        super().__init__("the daemon is not running", "not_running")
