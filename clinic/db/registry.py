"""Who is who: hubs, patients (pseudonyms and their hub), users and assignments. Every change
is audited in the same transaction as the change itself."""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg

from clinic import audit
from clinic.db.connect import Conn
from clinic.errors import StoreUnavailable, UsageError
from clinic.keys import KeyRing, encrypt
from edge.config import ID_RE
from edge.readings import PSEUDONYM_PATTERN

_PSEUDONYM_RE = re.compile(PSEUDONYM_PATTERN)
ROLES = ("admin", "clinician", "auditor")


def check_hub_id(hub_id: str) -> str:
    if not ID_RE.match(hub_id):
        raise UsageError("a hub id is 1-64 letters, digits, '.', '_' or '-'")
    return hub_id


def check_pseudonym(p: str) -> str:
    if not _PSEUDONYM_RE.match(p):
        raise UsageError("a pseudonym is 1-64 letters, digits, '-' or '.'")
    return p


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Hub:
    hub_id: str
    enrolled_at: dt.datetime
    revoked_at: dt.datetime | None


def enroll_hub(conn: Conn, hub_id: str, actor: str) -> None:
    """Enroll (or re-enroll a revoked) hub."""
    check_hub_id(hub_id)
    with _tx(conn):
        conn.execute(
            "INSERT INTO hubs (hub_id, enrolled_at) VALUES (%s, %s) ON CONFLICT (hub_id) "
            "DO UPDATE SET revoked_at = NULL", (hub_id, _now()))
        audit.append(conn, actor, "hub.enroll", hub_id)


def revoke_hub(conn: Conn, hub_id: str, actor: str) -> None:
    """Refuse everything the hub sends from now on (its data already stored stays)."""
    with _tx(conn):
        cur = conn.execute("UPDATE hubs SET revoked_at = %s WHERE hub_id = %s",
                           (_now(), hub_id))
        if cur.rowcount == 0:
            raise UsageError("no such hub — see `clinic hubs list`")
        audit.append(conn, actor, "hub.revoke", hub_id)


def list_hubs(conn: Conn) -> list[Hub]:
    rows = conn.execute("SELECT hub_id, enrolled_at, revoked_at FROM hubs ORDER BY hub_id")
    return [Hub(str(h), e, r) for h, e, r in rows]


def add_patient(conn: Conn, ring: KeyRing, pseudonym: str, hub_id: str,
                display_name: str | None, actor: str) -> None:
    """Enroll a pseudonym to the hub that serves it; the optional name is stored sealed."""
    check_pseudonym(pseudonym)
    key_id: str | None = None
    blob: bytes | None = None
    if display_name:
        key_id, blob = encrypt(ring, display_name.encode(), b"patient-name|" + pseudonym.encode())
    with _tx(conn):
        if conn.execute("SELECT 1 FROM hubs WHERE hub_id = %s", (hub_id,)).fetchone() is None:
            raise UsageError("no such hub — enroll it first (`clinic hubs enroll`)")
        conn.execute(
            "INSERT INTO patients (pseudonym, hub_id, name_key_id, name_enc, added_at) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (pseudonym) DO UPDATE SET "
            "hub_id = excluded.hub_id, name_key_id = coalesce(excluded.name_key_id, "
            "patients.name_key_id), name_enc = coalesce(excluded.name_enc, patients.name_enc)",
            (pseudonym, hub_id, key_id, blob, _now()))
        # the pseudonym is the target: the audit log is PHI-controlled like the database
        audit.append(conn, actor, "patient.add", pseudonym, {"hub": hub_id})


def list_patients(conn: Conn) -> list[tuple[str, str, list[str]]]:
    """(pseudonym, hub, assigned clinicians) for every patient."""
    rows = conn.execute(
        "SELECT p.pseudonym, p.hub_id, coalesce(array_agg(a.username ORDER BY a.username) "
        "FILTER (WHERE a.username IS NOT NULL), '{}') FROM patients p LEFT JOIN assignments a "
        "USING (pseudonym) GROUP BY p.pseudonym, p.hub_id ORDER BY p.pseudonym")
    return [(str(p), str(h), list(u)) for p, h, u in rows]


def assign(conn: Conn, pseudonym: str, username: str, actor: str, *, on: bool = True) -> None:
    """Give (or take away) a clinician's access to a patient."""
    with _tx(conn):
        if on:
            role = conn.execute("SELECT role FROM users WHERE username = %s",
                                (username,)).fetchone()
            if role is None or role[0] != "clinician":
                raise UsageError("no such clinician — add one with `clinic users add`")
            if conn.execute("SELECT 1 FROM patients WHERE pseudonym = %s",
                            (pseudonym,)).fetchone() is None:
                raise UsageError("no such patient — add it with `clinic patients add`")
            conn.execute("INSERT INTO assignments VALUES (%s, %s) ON CONFLICT DO NOTHING",
                         (pseudonym, username))
        else:
            conn.execute("DELETE FROM assignments WHERE pseudonym = %s AND username = %s",
                         (pseudonym, username))
        audit.append(conn, actor, "patient.assign" if on else "patient.unassign", pseudonym,
                     {"clinician": username})


def add_user(conn: Conn, ring: KeyRing, username: str, role: str, password_hash: str,
             totp_secret: str, actor: str) -> None:
    """A user with an argon2id hash and a sealed TOTP secret."""
    if role not in ROLES:
        raise UsageError(f"role must be one of {', '.join(ROLES)}")
    if not ID_RE.match(username):
        raise UsageError("a username is 1-64 letters, digits, '.', '_' or '-'")
    key_id, blob = encrypt(ring, totp_secret.encode(), b"totp|" + username.encode())
    with _tx(conn):
        try:
            conn.execute(
                "INSERT INTO users (username, role, password_hash, totp_key_id, totp_enc, "
                "created_at) VALUES (%s, %s, %s, %s, %s, %s)",
                (username, role, password_hash, key_id, blob, _now()))
        except psycopg.errors.UniqueViolation as exc:
            raise UsageError("that user exists already") from exc
        audit.append(conn, actor, "user.add", username, {"role": role})


def disable_user(conn: Conn, username: str, actor: str) -> None:
    with _tx(conn):
        cur = conn.execute("UPDATE users SET disabled = true WHERE username = %s", (username,))
        if cur.rowcount == 0:
            raise UsageError("no such user")
        audit.append(conn, actor, "user.disable", username)


def reset_mfa(conn: Conn, ring: KeyRing, username: str, totp_secret: str, actor: str) -> None:
    key_id, blob = encrypt(ring, totp_secret.encode(), b"totp|" + username.encode())
    with _tx(conn):
        cur = conn.execute("UPDATE users SET totp_key_id = %s, totp_enc = %s "
                           "WHERE username = %s", (key_id, blob, username))
        if cur.rowcount == 0:
            raise UsageError("no such user")
        audit.append(conn, actor, "user.reset_mfa", username)


@contextlib.contextmanager
def _tx(conn: Conn) -> Iterator[None]:
    """A transaction whose psycopg errors become StoreUnavailable (ClinicErrors pass)."""
    try:
        with conn.transaction():
            yield
    except psycopg.Error as exc:
        raise StoreUnavailable("PostgreSQL refused the operation") from exc
