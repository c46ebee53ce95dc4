"""Sign-in (argon2id password, then TOTP), throttling and lockout, server-side sessions and
API tokens, all in PostgreSQL. Every sign-in outcome is audited; no password, code or
session id is ever stored or logged (sessions and tokens are kept as SHA-256 digests)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import psycopg
import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from clinic import audit
from clinic.db.connect import Conn
from clinic.errors import ClinicError, StoreUnavailable, UsageError
from clinic.keys import KeyRing, decrypt
from clinic.web import security as sec

_HASHER = PasswordHasher()
#: verified when the username is unknown, so both cases cost the same
_DUMMY_HASH = _HASHER.hash("not a password of anyone")


class SignInRefused(ClinicError):
    """Wrong credentials, a locked or disabled account: the user sees one generic message."""

    def __init__(self, reason: str) -> None:
        super().__init__("sign-in refused")
        self.reason = reason


@dataclass(frozen=True)
class Session:
    username: str
    role: str
    csrf: str
    glucose_unit: str


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _failure_state(conn: Conn, username: str) -> sec.FailureState | None:
    row = conn.execute("SELECT failures, locked_until FROM signin_failures WHERE username = %s",
                       (username,)).fetchone()
    return None if row is None else sec.FailureState(int(row[0]), row[1])


def _record_failure(conn: Conn, username: str, reason: str, policy: sec.LockPolicy,
                    now: dt.datetime) -> None:
    state = sec.after_failure(_failure_state(conn, username), policy, now)
    conn.execute(
        "INSERT INTO signin_failures (username, failures, last_at, locked_until) "
        "VALUES (%s, %s, %s, %s) ON CONFLICT (username) DO UPDATE SET failures = "
        "excluded.failures, last_at = excluded.last_at, locked_until = excluded.locked_until",
        (username, state.failures, now, state.locked_until))
    audit.append(conn, username, "signin.fail", username,
                 {"reason": reason, "failures": state.failures,
                  "locked": state.locked_until is not None}, now=now)


def _password_ok(stored: str, password: str) -> bool:
    try:
        return _HASHER.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def sign_in(conn: Conn, ring: KeyRing, username: str, password: str, otp: str,
            policy: sec.LockPolicy, *, now: dt.datetime | None = None) -> str:
    """The role of ``username`` when password and TOTP are right; SignInRefused otherwise.
    A locked name is refused without looking at what was typed."""
    now = now or _now()
    username = username.strip()[:64]
    role = ""
    try:
        with conn.transaction():
            if sec.is_locked(_failure_state(conn, username), now):
                # audited and committed; the refusal is raised after the transaction
                audit.append(conn, username, "signin.locked", username, now=now)
                reason = "locked"
            else:
                role, reason = _check(conn, ring, username, password, otp)
                if reason:
                    _record_failure(conn, username, reason, policy, now)
                else:
                    conn.execute("DELETE FROM signin_failures WHERE username = %s",
                                 (username,))
                    audit.append(conn, username, "signin.ok", username, now=now)
    except psycopg.Error as exc:
        raise StoreUnavailable("sign-in could not be checked") from exc
    if reason:
        raise SignInRefused(reason)
    return role


def _check(conn: Conn, ring: KeyRing, username: str, password: str,
           otp: str) -> tuple[str, str]:
    """(role, "") when everything is right, else ("", the failure's reason)."""
    row = conn.execute("SELECT role, password_hash, totp_key_id, totp_enc, disabled "
                       "FROM users WHERE username = %s", (username,)).fetchone()
    ok = _password_ok(str(row[1]) if row else _DUMMY_HASH, password)
    if row is None or not ok:
        return "", "password"
    if row[4]:
        return "", "disabled"
    secret = decrypt(ring, str(row[2]), bytes(row[3]), b"totp|" + username.encode())
    if not pyotp.TOTP(secret.decode()).verify(otp.strip(), valid_window=1):
        return "", "otp"
    return str(row[0]), ""


def create_session(conn: Conn, username: str, *, now: dt.datetime | None = None) -> str:
    """A new session; returns the cookie value (only its digest is stored)."""
    now = now or _now()
    sid = sec.new_secret()
    conn.execute("INSERT INTO web_sessions (id_hash, username, csrf, created_at, last_seen) "
                 "VALUES (%s, %s, %s, %s, %s)", (sec.digest(sid), username, sec.new_secret(),
                                                  now, now))
    return sid


def load_session(conn: Conn, sid: str | None, *, idle_s: int, lifetime_s: int,
                 now: dt.datetime | None = None, touch: bool = True) -> Session | None:
    """The live session of cookie ``sid`` (its idle clock restarted unless ``touch`` is
    false: the live-update stream is not activity), or None. An expired session is deleted;
    a disabled user's sessions are refused."""
    if not sid:
        return None
    now = now or _now()
    h = sec.digest(sid)
    row = conn.execute(
        "SELECT s.username, u.role, s.csrf, s.created_at, s.last_seen, u.disabled, "
        "coalesce(p.glucose_unit, 'mg/dL') FROM web_sessions s JOIN users u USING (username) "
        "LEFT JOIN user_prefs p USING (username) WHERE s.id_hash = %s", (h,)).fetchone()
    if row is None:
        return None
    if row[5] or sec.session_expired(sec.SessionTimes(row[3], row[4]), now, idle_s=idle_s,
                                     lifetime_s=lifetime_s):
        conn.execute("DELETE FROM web_sessions WHERE id_hash = %s", (h,))
        return None
    if touch:
        conn.execute("UPDATE web_sessions SET last_seen = %s WHERE id_hash = %s", (now, h))
    return Session(str(row[0]), str(row[1]), str(row[2]), str(row[6]))


def end_session(conn: Conn, sid: str | None, username: str) -> None:
    if sid:
        conn.execute("DELETE FROM web_sessions WHERE id_hash = %s", (sec.digest(sid),))
        audit.append(conn, username, "signout", username)


def set_unit(conn: Conn, username: str, unit: str) -> None:
    if unit not in ("mg/dL", "mmol/L"):
        raise UsageError("unit must be mg/dL or mmol/L")
    conn.execute("INSERT INTO user_prefs (username, glucose_unit) VALUES (%s, %s) "
                 "ON CONFLICT (username) DO UPDATE SET glucose_unit = excluded.glucose_unit",
                 (username, unit))


# --- API tokens -------------------------------------------------------------------------------


def create_token(conn: Conn, username: str, actor: str, *,
                 expires_days: float | None = None) -> str:
    """A new bearer token for ``username`` (printed once; only its digest is stored)."""
    now = _now()
    token = sec.TOKEN_PREFIX + sec.new_secret()
    expires = now + dt.timedelta(days=expires_days) if expires_days else None
    try:
        with conn.transaction():
            if conn.execute("SELECT 1 FROM users WHERE username = %s AND NOT disabled",
                            (username,)).fetchone() is None:
                raise UsageError("no such (enabled) user")
            row = conn.execute(
                "INSERT INTO api_tokens (token_hash, username, created_at, expires_at) "
                "VALUES (%s, %s, %s, %s) RETURNING id",
                (sec.digest(token), username, now, expires)).fetchone()
            tid = int(row[0]) if row else 0
            audit.append(conn, actor, "token.create", username,
                         {"token_id": tid, "expires": expires})
    except psycopg.Error as exc:
        raise StoreUnavailable("the token could not be stored") from exc
    return token


def list_tokens(conn: Conn) -> list[tuple[int, str, dt.datetime, dt.datetime | None,
                                          dt.datetime | None]]:
    rows = conn.execute("SELECT id, username, created_at, expires_at, revoked_at "
                        "FROM api_tokens ORDER BY id")
    return [(int(i), str(u), c, e, r) for i, u, c, e, r in rows]


def revoke_token(conn: Conn, token_id: int, actor: str) -> None:
    with conn.transaction():
        cur = conn.execute("UPDATE api_tokens SET revoked_at = %s WHERE id = %s "
                           "AND revoked_at IS NULL RETURNING username", (_now(), token_id))
        row = cur.fetchone()
        if row is None:
            raise UsageError("no such active token — see `clinic tokens list`")
        audit.append(conn, actor, "token.revoke", str(row[0]), {"token_id": token_id})


def token_user(conn: Conn, token: str | None) -> tuple[str, str] | None:
    """(username, role) of a live bearer token, or None."""
    if not token or not token.startswith(sec.TOKEN_PREFIX):
        return None
    row = conn.execute(
        "SELECT u.username, u.role FROM api_tokens t JOIN users u USING (username) "
        "WHERE t.token_hash = %s AND t.revoked_at IS NULL AND NOT u.disabled "
        "AND (t.expires_at IS NULL OR t.expires_at > %s)",
        (sec.digest(token), _now())).fetchone()
    return None if row is None else (str(row[0]), str(row[1]))
