"""Alerts in PostgreSQL: open, resolve, acknowledge (with a required note), list, and the
per-patient thresholds. Every transition is audited in the transaction that makes it.

Decisions about one patient are serialised by locking the patient's ``alert_state`` row
(:func:`lock_patients`, always in pseudonym order); the partial unique index
``alerts_one_open`` keeps at most one unresolved alert per patient and kind whatever happens.
Audit details carry ids and kinds only: never a value or a note.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

from clinic import audit
from clinic.alerts.rules import OVERRIDABLE, HrState, Kind, Thresholds
from clinic.db.connect import Conn
from clinic.errors import StoreUnavailable, UsageError
from clinic.keys import KeyRing, decrypt, encrypt

MAX_NOTE_CHARS = 2000
_COLS = sql.SQL(", ").join(sql.Identifier(c) for c in OVERRIDABLE)


@dataclass(frozen=True)
class PatientState:
    """What the rules remember about a patient (the ``alert_state`` row)."""

    patient: str
    last_reading_at: dt.datetime | None
    glucose_at: dt.datetime | None
    hr_at: dt.datetime | None
    hr: HrState


@dataclass(frozen=True)
class Alert:
    id: int
    patient: str
    kind: str
    state: str
    hub_id: str | None
    opened_at: dt.datetime
    acknowledged_at: dt.datetime | None
    acknowledged_by: str | None
    note: str | None
    resolved_at: dt.datetime | None

    def as_json(self) -> dict[str, Any]:
        def iso(t: dt.datetime | None) -> str | None:
            return t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z") if t else None
        return {"id": self.id, "patient": self.patient, "kind": self.kind, "state": self.state,
                "hub": self.hub_id, "opened_at": iso(self.opened_at),
                "acknowledged_at": iso(self.acknowledged_at),
                "acknowledged_by": self.acknowledged_by, "note": self.note,
                "resolved_at": iso(self.resolved_at)}


# --- locking and state ----------------------------------------------------------------------


def lock_patients(conn: Conn, patients: Sequence[str]) -> dict[str, PatientState]:
    """Lock (creating when missing) the patients' alert_state rows, in pseudonym order."""
    ordered = sorted(set(patients))
    if not ordered:
        return {}
    conn.execute("INSERT INTO alert_state (patient) SELECT unnest(%s::text[]) "
                 "ON CONFLICT (patient) DO NOTHING", (ordered,))
    out = {}
    for p, last, g_at, h_at, side, run, ok in conn.execute(
            "SELECT patient, last_reading_at, glucose_at, hr_at, hr_side, hr_run, hr_ok_run "
            "FROM alert_state WHERE patient = ANY(%s) ORDER BY patient FOR UPDATE", (ordered,)):
        out[str(p)] = PatientState(str(p), last, g_at, h_at, HrState(side, int(run), int(ok)))
    return out


def save_state(conn: Conn, s: PatientState) -> None:
    conn.execute(
        "UPDATE alert_state SET last_reading_at = %s, glucose_at = %s, hr_at = %s, hr_side = %s,"
        " hr_run = %s, hr_ok_run = %s WHERE patient = %s",
        (s.last_reading_at, s.glucose_at, s.hr_at, s.hr.side, s.hr.run, s.hr.ok_run, s.patient))


def open_alerts(conn: Conn, patients: Sequence[str]) -> dict[str, dict[Kind, int]]:
    """patient -> kind -> id of its unresolved (open or acknowledged) alerts."""
    out: dict[str, dict[Kind, int]] = {p: {} for p in patients}
    for aid, p, kind in conn.execute(
            "SELECT id, patient, kind FROM alerts WHERE state <> 'resolved' AND "
            "patient = ANY(%s)", (list(patients),)):
        out.setdefault(str(p), {})[Kind(kind)] = int(aid)
    return out


def thresholds_for(conn: Conn, patients: Sequence[str], defaults: Thresholds
                   ) -> dict[str, Thresholds]:
    """Each patient's thresholds: the defaults with the patient's overrides."""
    out = {p: defaults for p in patients}
    cur = conn.execute(sql.SQL("SELECT patient, {} FROM alert_thresholds WHERE patient = "
                               "ANY(%s)").format(_COLS), (list(patients),))
    for row in cur:
        out[str(row[0])] = defaults.overridden(dict(zip(OVERRIDABLE, row[1:], strict=True)))
    return out


# --- transitions (inside the caller's transaction, patient locked) --------------------------


def open_alert(conn: Conn, patient: str, kind: Kind, at: dt.datetime, actor: str,
               now: dt.datetime, *, hub_id: str | None = None) -> int:
    row = conn.execute(
        "INSERT INTO alerts (patient, kind, state, opened_at, hub_id) VALUES "
        "(%s, %s, 'open', %s, %s) RETURNING id", (patient, kind.value, at, hub_id)).fetchone()
    assert row is not None
    aid = int(row[0])
    audit.append(conn, actor, "alert.open", patient, {"alert": aid, "kind": kind.value}, now=now)
    return aid


def resolve_alert(conn: Conn, alert_id: int, patient: str, kind: Kind, at: dt.datetime,
                  actor: str, now: dt.datetime) -> None:
    conn.execute("UPDATE alerts SET state = 'resolved', resolved_at = %s WHERE id = %s",
                 (at, alert_id))
    audit.append(conn, actor, "alert.resolve", patient, {"alert": alert_id, "kind": kind.value},
                 now=now)


# --- acknowledgement, listing ---------------------------------------------------------------


def _note_aad(alert_id: int) -> bytes:
    return f"alert-note|{alert_id}".encode()


def acknowledge(conn: Conn, ring: KeyRing, alert_id: int, username: str, note: str,
                now: dt.datetime) -> None:
    """A clinician assigned to the patient acknowledges an open alert, with a note (sealed).
    An alert the user may not see is "no such alert", as the web app answers 404."""
    text = note.strip()
    if not text:
        raise UsageError("an acknowledgement needs a note (--note TEXT)")
    if len(text) > MAX_NOTE_CHARS:
        raise UsageError(f"the note is longer than {MAX_NOTE_CHARS} characters")
    with _tx(conn):
        user = conn.execute("SELECT role, disabled FROM users WHERE username = %s",
                            (username,)).fetchone()
        if user is None or user[0] != "clinician" or user[1]:
            raise UsageError("only an enabled clinician can acknowledge an alert")
        row = conn.execute(
            "SELECT a.patient, a.kind, a.state FROM alerts a JOIN assignments s ON "
            "s.pseudonym = a.patient AND s.username = %s WHERE a.id = %s FOR UPDATE OF a",
            (username, alert_id)).fetchone()
        if row is None:
            raise UsageError("no such alert — see `clinic alerts list`")
        patient, kind, state = str(row[0]), str(row[1]), str(row[2])
        if state != "open":
            raise UsageError(f"the alert is {state} already")
        kid, blob = encrypt(ring, text.encode(), _note_aad(alert_id))
        conn.execute(
            "UPDATE alerts SET state = 'acknowledged', acknowledged_at = %s, acknowledged_by = %s,"
            " note_key_id = %s, note_enc = %s WHERE id = %s",
            (now, username, kid, blob, alert_id))
        audit.append(conn, f"user:{username}", "alert.ack", patient,
                     {"alert": alert_id, "kind": kind}, now=now)


def list_alerts(conn: Conn, ring: KeyRing, *, include_resolved: bool = False,
                clinician: str | None = None, patient: str | None = None,
                limit: int = 500) -> list[Alert]:
    """Alerts, newest first; ``clinician`` narrows them to that clinician's patients."""
    sql = ("SELECT a.id, a.patient, a.kind, a.state, a.hub_id, a.opened_at, a.acknowledged_at,"
           " a.acknowledged_by, a.note_key_id, a.note_enc, a.resolved_at FROM alerts a"
           " WHERE (%(all)s OR a.state <> 'resolved')"
           " AND (%(patient)s::text IS NULL OR a.patient = %(patient)s)"
           " AND (%(clinician)s::text IS NULL OR EXISTS (SELECT 1 FROM assignments s"
           " WHERE s.pseudonym = a.patient AND s.username = %(clinician)s))"
           " ORDER BY a.opened_at DESC, a.id DESC LIMIT %(limit)s")
    args = {"all": include_resolved, "patient": patient, "clinician": clinician, "limit": limit}
    out = []
    with _tx(conn):
        for (aid, p, kind, state, hub, opened, acked_at, acked_by, nkid, nenc,
             resolved) in conn.execute(sql, args):
            note = (decrypt(ring, str(nkid), bytes(nenc), _note_aad(int(aid))).decode()
                    if nenc is not None else None)
            out.append(Alert(int(aid), str(p), str(kind), str(state), hub, opened, acked_at,
                             acked_by, note, resolved))
    return out


# --- thresholds -----------------------------------------------------------------------------


def get_thresholds(conn: Conn, patient: str, defaults: Thresholds) -> Thresholds:
    with _tx(conn):
        return thresholds_for(conn, [patient], defaults)[patient]


def set_thresholds(conn: Conn, patient: str, overrides: Mapping[str, Decimal | int | float | None],
                   defaults: Thresholds, actor: str, now: dt.datetime, *,
                   clear: bool = False) -> Thresholds:
    """Override (or with ``clear``, drop every override of) a patient's thresholds; they take
    effect from the next reading. Audited (names only)."""
    unknown = set(overrides) - set(OVERRIDABLE)
    if unknown:
        raise UsageError("unknown threshold: " + ", ".join(sorted(unknown)))
    given = {k: v for k, v in overrides.items() if v is not None}
    with _tx(conn):
        if conn.execute("SELECT 1 FROM patients WHERE pseudonym = %s",
                        (patient,)).fetchone() is None:
            raise UsageError("no such patient — add it with `clinic patients add`")
        current = {} if clear else _overrides(conn, patient)
        merged = {**current, **given}
        effective = defaults.overridden(merged)
        problems = effective.problems()
        if problems:
            raise UsageError("; ".join(problems))
        values = [merged.get(k) for k in OVERRIDABLE]
        conn.execute(sql.SQL(
            "INSERT INTO alert_thresholds (patient, {}, updated_at) VALUES (%s, {}, %s) "
            "ON CONFLICT (patient) DO UPDATE SET ({}, updated_at) = ROW({}, excluded.updated_at)"
        ).format(_COLS, sql.SQL(", ").join(sql.Placeholder() * len(OVERRIDABLE)), _COLS,
                 sql.SQL(", ").join(sql.Identifier("excluded", c) for c in OVERRIDABLE)),
            (patient, *values, now))
        audit.append(conn, actor, "alert.thresholds", patient,
                     {"set": sorted(given), "cleared": clear}, now=now)
    return effective


def _overrides(conn: Conn, patient: str) -> dict[str, Any]:
    row = conn.execute(sql.SQL("SELECT {} FROM alert_thresholds WHERE patient = %s").format(
        _COLS), (patient,)).fetchone()
    return {} if row is None else {k: v for k, v in zip(OVERRIDABLE, row, strict=True)
                                   if v is not None}


@contextlib.contextmanager
def _tx(conn: Conn) -> Iterator[None]:
    """A transaction whose psycopg errors become StoreUnavailable (ClinicErrors pass)."""
    try:
        with conn.transaction():
            yield
    except psycopg.Error as exc:
        raise StoreUnavailable("PostgreSQL refused the operation") from exc
