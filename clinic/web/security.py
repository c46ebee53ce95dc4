"""Security rules as plain functions: response headers, secrets and their hashes, CSRF
comparison and the sign-in throttling/lockout policy. No I/O."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass

#: every response carries these (the app serves its own static JS/CSS, nothing else)
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("strict-transport-security", "max-age=63072000; includeSubDomains"),
    ("content-security-policy",
     "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
     "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("permissions-policy", "camera=(), microphone=(), geolocation=()"),
)

SESSION_COOKIE = "__Host-clinic-session"
PRE_COOKIE = "__Host-clinic-pre"
TOKEN_PREFIX = "clk_"  # noqa: S105 - a label, not a secret


def new_secret() -> str:
    """256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def digest(secret: str) -> bytes:
    """What is stored instead of a session id or a token."""
    return hashlib.sha256(secret.encode()).digest()


def same(a: str | None, b: str | None) -> bool:
    """Constant-time equality; an absent or empty value never matches."""
    if not a or not b:
        return False
    return hmac.compare_digest(a.encode(), b.encode())


def cookie_header(name: str, value: str, *, max_age: int | None = None) -> str:
    """A ``Set-Cookie`` value: Secure, HttpOnly, SameSite=Strict, host-only (``__Host-``)."""
    parts = [f"{name}={value}", "Path=/", "Secure", "HttpOnly", "SameSite=Strict"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    return "; ".join(parts)


@dataclass(frozen=True)
class LockPolicy:
    max_failures: int
    lockout_s: int


@dataclass(frozen=True)
class FailureState:
    failures: int
    locked_until: dt.datetime | None


def is_locked(state: FailureState | None, now: dt.datetime) -> bool:
    return state is not None and state.locked_until is not None and now < state.locked_until


def after_failure(state: FailureState | None, policy: LockPolicy,
                  now: dt.datetime) -> FailureState:
    """One more failure; at ``max_failures`` the name is locked for ``lockout_s``. A lock
    that has run out starts the count again."""
    failures = 1
    if state is not None and not (state.locked_until and now >= state.locked_until):
        failures = state.failures + 1
    locked = now + dt.timedelta(seconds=policy.lockout_s) if failures >= policy.max_failures \
        else None
    return FailureState(failures, locked)


@dataclass(frozen=True)
class SessionTimes:
    created_at: dt.datetime
    last_seen: dt.datetime


def session_expired(t: SessionTimes, now: dt.datetime, *, idle_s: int,
                    lifetime_s: int) -> bool:
    """Idle for ``idle_s`` or older than ``lifetime_s``."""
    return (now - t.last_seen).total_seconds() >= idle_s or \
        (now - t.created_at).total_seconds() >= lifetime_s
